"""The benchmark: its modes end to end on tiny shapes, its flag checks, its FLOP counts and the
onnxruntime model's numbers. No timing is ever asserted."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import run_module
from lstmcore._argtypes import MAX_THREADS
from lstmcore.bench import cli, contenders, measure
from lstmcore.bench.cases import ALL_CASES, CASE_GROUPS, QUICK, Case, case_lengths, flops
from lstmcore.bench.contenders import onnx_runtime


def run_bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_module("lstmcore.bench", *args, timeout=timeout)


def check_header(report: dict[str, Any]) -> None:
    assert report["cpu"] and report["cores"] >= 1 and report["usable_cores"] >= 1
    assert report["isa"] and report["blas_core"]
    assert report["versions"]["numpy"] == np.__version__
    assert set(report["openblas_env"]) == {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"}
    assert report["ceilings_flops"]["1"] > 1e8  # a real GEMM rate, not a placeholder


@pytest.mark.subprocess
def test_interleaved_quick_run_writes_every_field(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = run_bench("--quick", "--mode", "interleaved", "--threads", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    check_header(report)
    assert report["mode"] == "interleaved"
    rows = report["rows"]
    assert {(r["shape"], r["kind"]) for r in rows} == {(c.name, c.kind) for c in QUICK}
    assert {"lstmcore", "reference", "lstmcore-lengths", "lstmcore-padded"} <= {
        r["contender"] for r in rows
    }
    for r in rows:
        assert r["median_ms"] > 0 and r["steps"] == 3 and r["rounds"] == 1
        assert r["range_ms"] is None and r["fraction_of_floor"] > 0
    assert "CPU:" in done.stdout and "sgemm rate" in done.stdout


@pytest.mark.subprocess
def test_isolated_mode_reports_rounds(tmp_path: Path) -> None:
    out, table = tmp_path / "bench.json", tmp_path / "bench.md"
    cases = ("--cases", "tiny", "tiny-infer", "tiny-varlen")
    contenders = ("--contenders", "lstmcore", "onnxruntime")
    files = ("--json", str(out), "--markdown", str(table))
    done = run_bench("--quick", "--rounds", "2", "--threads", "1", *cases, *contenders, *files)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    check_header(report)
    assert report["mode"] == "isolated" and report["rounds"] == 2
    rows = report["rows"]
    assert {r["shape"] for r in rows} == {"tiny", "tiny-infer", "tiny-varlen"}
    for r in rows:
        lo, hi = r["range_ms"]
        assert r["rounds"] == 2 and r["steps"] == 6
        assert lo <= r["median_ms"] <= hi
    assert "round 2/2" in done.stderr  # the libraries ran in separate worker processes
    tables = table.read_text().split("\n\n")  # one per kind, a line per case
    assert [t.splitlines()[0].split(" (ms)")[0] for t in tables] == [
        "| train",
        "| infer",
        "| varlen",
    ]
    for t in tables:
        lines = t.strip().splitlines()
        assert len(lines) == 3 and all(ln.count("|") == lines[0].count("|") for ln in lines)


@pytest.mark.subprocess
@pytest.mark.parametrize("precision", ["bf16", "both"])
def test_precision_selects_the_contenders_and_their_baselines(
    tmp_path: Path, precision: str
) -> None:
    out = tmp_path / "bench.json"
    cases = ("--cases", "tiny", "tiny-infer", "tiny-varlen")
    done = run_bench(
        "--quick", "--mode", "interleaved", "--threads", "1", "--precision", precision, *cases,
        "--contenders", "lstmcore", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    names = {(r["shape"], r["contender"]) for r in rows}
    bf16 = {("tiny", "lstmcore-bf16"), ("tiny-infer", "lstmcore-bf16")}
    fp32 = {("tiny", "lstmcore"), ("tiny-infer", "lstmcore")}
    varlen = {("tiny-varlen", "lstmcore-lengths"), ("tiny-varlen", "lstmcore-padded")}
    assert names == (bf16 if precision == "bf16" else bf16 | fp32 | varlen)
    for r in rows:  # each row against lstmcore of its own precision: itself here
        assert r["precision"] == ("bf16" if r["contender"].endswith("-bf16") else "fp32")
        if r["contender"] in ("lstmcore", "lstmcore-bf16", "lstmcore-lengths"):
            assert r["time_vs_lstmcore"] == 1.0


def test_bf16_baselines() -> None:
    present = ["lstmcore", "torch", "lstmcore-bf16", "torch-bf16"]
    assert contenders.baseline("torch-bf16", present) == "lstmcore-bf16"
    assert contenders.baseline("torch", present) == "lstmcore"
    assert contenders.baseline("torch-bf16", ["lstmcore", "torch-bf16"]) is None


def test_onnxruntime_matches_lstmcore() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    for T, B, I, H in ((1, 1, 1, 1), (5, 3, 4, 7), (28, 16, 28, 33)):  # noqa: N806, E741
        case = Case("check", "infer", T, B, I, H, 1)
        _, _, diff = onnx_runtime.onnx_checked(case, np.random.default_rng(T + H), threads=1)
        assert diff <= 1e-4, (T, B, I, H, diff)


def test_onnxruntime_is_refused_when_its_logits_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    right = onnx_runtime.lstmcore_logits
    monkeypatch.setattr(onnx_runtime, "lstmcore_logits", lambda net, x: right(net, x) + 1e-3)
    case = Case("check", "infer", 3, 2, 4, 5, 1)
    with pytest.raises(contenders.RefusedError, match="differ from lstmcore's"):
        onnx_runtime.infer(case, np.random.default_rng(0), threads=1)


def test_flop_counts() -> None:
    rows = ALL_CASES["mnist-rows"]
    assert flops(rows) == pytest.approx(1.616e9, rel=1e-3)  # the design's count
    infer = ALL_CASES["infer-B128"]
    assert flops(infer) == 2 * 28 * 128 * 512 * (28 + 128) + 2 * 128 * 128 * 10
    varlen = ALL_CASES["varlen-rows"]
    lengths = case_lengths(varlen)
    assert lengths.min() >= 1 and lengths.max() <= varlen.T and lengths.shape == (varlen.B,)
    ratio = flops(varlen) / flops(rows)
    assert ratio == pytest.approx(lengths.sum() / (varlen.B * varlen.T), rel=1e-3)
    stream = ALL_CASES["stream-B1"]
    assert flops(stream) == 2 * 1 * 512 * (28 + 128)
    # two layers, two directions, loss on every step: layer 0 reads I (forward, dW_ih), layer
    # 1 reads D*H three times (forward, dW_ih, dx), each direction 3H (recurrent, dW_hh, dh)
    seq = ALL_CASES["tiny-2l-bi-seq"]
    per_row = 4 * 8 * ((2 * 3 + 3 * 8) + (3 * 16 + 3 * 8)) * 2
    assert flops(seq) == 2 * seq.B * seq.T * per_row


def test_grid_covers_the_shapes_people_train() -> None:
    grid = CASE_GROUPS["grid"]
    assert {c.layers for c in grid} == {1, 2, 3} and {c.bidirectional for c in grid} == {
        False,
        True,
    }
    assert {c.every_step for c in grid} == {False, True}
    assert min(c.T for c in grid) == 28 and max(c.T for c in grid) >= 200
    assert min(c.H for c in grid) == 64 and max(c.H for c in grid) == 512
    assert min(c.I for c in grid) == 8 and max(c.I for c in grid) == 128
    assert min(c.B for c in grid) == 16 and max(c.B for c in grid) == 256


@pytest.mark.parametrize(
    "argv",
    [
        ["--block", "0"],  # looped forever before (issue 10, item 7)
        ["--repeats", "0"],  # silently ran the default step counts
        ["--repeats", "-1"],  # IndexError after the work
        ["--warmup", "-1"],
        ["--rounds", "0"],
        ["--mode", "interleaved", "--rounds", "2"],
        ["--mode", "both"],
        ["--threads", "0"],
        ["--threads", str(MAX_THREADS + 1)],
        ["--threads", "two"],
        ["--cases", "nope"],
        ["--contenders", "tensorflow"],
        ["--json", "MISSING/out.json"],  # FileNotFoundError after the work
        ["--json", "TMP"],  # a directory
        ["--markdown", "MISSING/out.md"],
        ["--worker", "{not json"],
    ],
)
def test_bad_flags_give_one_error_line_before_any_work(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark started before its flags were checked")

    for name in ("sgemm_rates", "run_plan", "run_isolated"):
        monkeypatch.setattr(cli, name, no_work)
    argv = [
        a.replace("MISSING", str(tmp_path / "missing")).replace("TMP", str(tmp_path)) for a in argv
    ]
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors


@pytest.mark.subprocess
def test_block_zero_ends(tmp_path: Path) -> None:
    """In a real process too: `--block 0` used to loop forever."""
    done = run_bench("--quick", "--block", "0", timeout=60)
    assert done.returncode == 2 and "--block" in done.stderr


def test_help_documents_every_flag() -> None:
    parser = cli.make_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        assert action.help, action.option_strings
        for flag in action.option_strings:
            assert flag in text, flag
    assert "isolated     (the default)" in text  # which mode is the default, and why


def test_missing_peers_are_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contenders, "find_spec", lambda name: None)
    note = contenders.unavailable("onnxruntime", 1)
    assert note is not None and "onnx, onnxruntime not importable" in note
    assert contenders.unavailable("lstmcore", 1) is None
    assert measure.build_steps(["onnxruntime"], ALL_CASES["tiny-infer"], 1, []) == {}


@pytest.mark.subprocess
def test_a_failing_worker_is_a_note() -> None:
    notes: list[str] = []
    plan = measure.Plan(("lstmcore",), ("no-such-case",), 1, None, 0, 1)
    assert measure.run_worker(plan, notes) == {}
    assert len(notes) == 1 and "worker failed (2)" in notes[0]
