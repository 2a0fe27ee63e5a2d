"""The GPU check's machinery, tested without a GPU: LSTMCORE_REQUIRE_GPU=1 turning skips into
failures with the reason, tools/gpu_check.sh's stage runner (time limits, the overall budget,
stages that depend on a failed one), its install stage refusing to go on without the carried
wheels, and the benchmark's table. The offline install and build themselves run in CI's GPU
check step (.ci/run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import lstmcore
from helpers import REPO

ROOT = REPO
CHECK = ROOT / "tools" / "gpu_check.sh"


def run_check(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK), str(out), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def summary(out: Path) -> list[str]:
    return (out / "summary.txt").read_text().splitlines()


@pytest.mark.subprocess
def test_require_gpu_turns_a_skip_into_a_failure_with_the_reason() -> None:
    """A GPU test in a fresh pytest with LSTMCORE_REQUIRE_GPU=1: where no GPU is usable it
    fails (it skips without the variable: tests/unit/test_cuda.py's skip list), and the failure
    carries the reason; where a GPU is usable it passes."""
    ok, reason = lstmcore.cuda_available()
    test = "tests/unit/test_cuda.py::test_gpu_need_dx_false_and_need_y_false"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=ROOT,
        env={**os.environ, "LSTMCORE_REQUIRE_GPU": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert run.returncode == 0, run.stdout
        return
    assert run.returncode != 0, run.stdout
    assert "LSTMCORE_REQUIRE_GPU=1 and this test cannot run" in run.stdout
    assert reason[:60] in run.stdout


@pytest.mark.subprocess
def test_a_hanging_stage_is_stopped_at_its_limit_and_the_next_one_runs(tmp_path: Path) -> None:
    begin = time.monotonic()
    result = run_check(tmp_path, "--selftest")
    took = time.monotonic() - begin
    assert result.returncode == 1, result.stdout + result.stderr
    lines = summary(tmp_path)
    assert lines[0].split()[:2] == ["quick", "ok"]
    assert lines[1].startswith("hang") and "TIMEOUT after 2 s (stopped)" in lines[1]
    assert lines[2].split()[:2] == ["after", "ok"]
    assert took < 20  # the hang's 60 s sleep (and the child it started) did not run out
    assert "==== total" in (tmp_path / "gpu_check.log").read_text()


@pytest.mark.subprocess
def test_a_stage_limit_can_be_set_per_stage(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--selftest", LSTMCORE_GPU_LIMIT_HANG="1")
    assert result.returncode == 1
    assert "TIMEOUT after 1 s (stopped)" in summary(tmp_path)[1]


@pytest.mark.subprocess
def test_a_spent_budget_skips_the_remaining_stages(tmp_path: Path) -> None:
    result = run_check(tmp_path, "--selftest", LSTMCORE_GPU_CHECK_BUDGET="2")
    assert result.returncode == 1
    lines = summary(tmp_path)
    assert len(lines) == 3
    assert all("SKIPPED (the 2 s budget is spent)" in line for line in lines), lines


@pytest.mark.subprocess
def test_without_the_carried_wheels_the_install_fails_and_nothing_builds(tmp_path: Path) -> None:
    """An empty wheel folder: install fails naming what is missing (a wheel, or something the
    machine itself must have), and every later stage is skipped as depending on it."""
    empty = tmp_path / "wheels"
    empty.mkdir()
    result = run_check(
        tmp_path / "out",
        LSTMCORE_GPU_WHEELS=str(empty),
        LSTMCORE_GPU_WORK=str(tmp_path / "work"),
        LSTMCORE_GPU_PYTHON=sys.executable,
    )
    assert result.returncode == 1
    lines = summary(tmp_path / "out")
    assert lines[0].startswith("install") and "FAILED" in lines[0]
    assert [line.split()[0] for line in lines] == [
        "install",
        "build",
        "tests",
        "sanitizer",
        "bench",
    ]
    assert all("SKIPPED" in line for line in lines[1:]), lines
    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "missing wheel" in log or "the machine lacks" in log
    assert "run tools/gpu_wheels.sh first" in log or "the machine lacks" in log


@pytest.mark.subprocess
def test_the_scripts_parse() -> None:
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "tools" / script)], check=True)


@pytest.mark.subprocess
def test_usage_without_an_output_folder() -> None:
    result = subprocess.run(["bash", str(CHECK)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage: tools/gpu_check.sh OUTDIR" in result.stderr


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "tools" / "gpu_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_table_compares_like_for_like() -> None:
    bench = _bench_module()
    row = {"shape": "rows B16 H128"}
    for k, key in enumerate(k for _, k in bench.COLUMNS):
        row[key] = 1.0 + k
    table = bench.render_table("header", [row, {"shape": "no torch", "lstmcore_train": 2.0}])
    lines = table.splitlines()
    assert lines[0] == "header"
    assert (
        "| rows B16 H128 | 1.000 | 2.000 | 3.000 | 4.000 | 5.000 | 6.000 | 7.000 | 8.000 |" in lines
    )
    # fp32 against TF32-off, tf32 against TF32-on
    assert "| rows B16 H128 | 0.50 | 0.75 | 0.83 | 0.88 |" in lines
    assert "| no torch | n/a | n/a | n/a | n/a |" in lines
    assert "| no torch | 2.000 | nan |" in table
    assert bench.training_gflop(28, 128, 28, 128) == pytest.approx(1.616, abs=1e-3)
