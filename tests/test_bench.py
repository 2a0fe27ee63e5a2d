"""The benchmark runs end to end on tiny shapes (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


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
