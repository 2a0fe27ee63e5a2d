"""The benchmark runs end to end on tiny shapes (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lstmcore import bench


def test_bench_quick_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "lstmcore.bench", "--quick", "--threads", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    contenders = {r["contender"] for r in rows}
    assert {"lstmcore", "numpy-reference"} <= contenders
    assert {(r["shape"], r["kind"]) for r in rows} == {
        (s, k) for s in ("tiny", "tiny-long") for k in ("train", "infer")
    }
    for r in rows:
        assert r["median_ms"] > 0 and r["steps"] == 3
    assert report["ceilings_flops"]["1"] > 1e8  # a real GEMM rate, not a placeholder
    assert "sgemm ceiling" in done.stdout


def test_bench_rejects_unknown_shapes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lstmcore.bench", "--shapes", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "unknown" in done.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--block", "0"],  # looped forever before
        ["--repeats", "0"],  # silently ran the default step counts
        ["--repeats", "-1"],  # IndexError after the work
        ["--threads", "0"],
        ["--threads", "1025"],
        ["--threads", "two"],
        ["--json", "MISSING/out.json"],  # FileNotFoundError after the work
        ["--json", "TMP"],  # a directory: IsADirectoryError after the work
    ],
)
def test_bad_flags_give_one_error_line_before_any_work(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        a.replace("MISSING", str(tmp_path / "missing")).replace("TMP", str(tmp_path)) for a in argv
    ]
    with pytest.raises(SystemExit) as stop:
        bench.main(["--quick", *argv])
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors


def test_block_zero_ends() -> None:
    """In a real process too: `--block 0` used to loop forever."""
    done = subprocess.run(
        [sys.executable, "-m", "lstmcore.bench", "--quick", "--block", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "--block" in done.stderr
