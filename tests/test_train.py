"""The training CLI end to end on small subsets: learning, resume, interrupts, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lstmcore import checkpoint, train
from lstmcore.nn import SequenceClassifier

QUICK = [
    "--train-subset",
    "1500",
    "--val-size",
    "500",
    "--hidden",
    "32",
    "--batch-size",
    "50",
    "--threads",
    "1",
    "--quiet",
]
TIMING_KEYS = {"seconds", "epoch_seconds", "samples_per_s", "peak_rss_mb"}  # measurements


def cli(
    *args: str, module: str = "lstmcore.train", timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_short_run_learns_and_writes_its_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = cli(*QUICK, "--epochs", "3", "--out", str(run))
    assert done.returncode == 0, done.stderr
    last_line = done.stdout.strip().splitlines()[-1]
    assert last_line.startswith("test accuracy: ") and "/10000)" in last_line
    rows = metrics(run)
    epochs, final = rows[:-1], rows[-1]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[-1]["val_accuracy"] > epochs[0]["val_accuracy"]
    assert epochs[-1]["val_accuracy"] > 0.5  # far above chance (0.1)
    assert 0.3 < final["test_accuracy"] <= 1.0  # chance is 0.1
    assert f"{100 * final['test_accuracy']:.2f}%" in last_line
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "metrics.jsonl",
        "last.npz",
        "best.npz",
    }
    evaluated = cli(str(run / "best.npz"), module="lstmcore.evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip().splitlines()[-1] == last_line


def test_same_seed_gives_bit_identical_metrics(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert cli(*QUICK, "--epochs", "2", "--out", str(tmp_path / name)).returncode == 0
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    args = [*QUICK, "--epochs", "4", "--train-subset", "3000"]
    assert cli(*args, "--out", str(tmp_path / "whole")).returncode == 0
    run = tmp_path / "cut"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstmcore.train", *args, "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "last.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err
    resumed = cli("--resume", str(run), "--threads", "1", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert metrics(run) == metrics(tmp_path / "whole")


@pytest.mark.parametrize(
    "flags",
    [
        ["--batch-size", "0"],
        ["--optimizer", "rmsprop"],
        ["--lr", "-1"],
        ["--epochs", "two"],
        ["--no-such-flag"],
        ["--clip", "nan"],
    ],
)
def test_bad_flags_are_usage_errors(flags: list[str]) -> None:
    done = cli(*flags)
    assert done.returncode == 2
    assert "usage:" in done.stderr and "Traceback" not in done.stderr


def test_cuda_without_a_gpu_is_one_clear_line() -> None:
    done = cli("--device", "cuda")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: ")


def test_bad_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    done = cli("--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte" in lines[0], done.stderr


def test_diverging_run_stops_naming_the_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = cli(
        *QUICK,
        "--epochs",
        "3",
        "--optimizer",
        "sgd",
        "--momentum",
        "0",
        "--lr",
        "1e38",  # the first updates overflow float32
        "--clip",
        "0",
        "--out",
        str(run),
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: step "), done.stderr
    assert "loss is" in lines[0] or "not finite" in lines[0]


def test_tampered_checkpoint_is_refused_before_anything_changes(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    model = SequenceClassifier(hidden_size=16, seed=1)
    other = SequenceClassifier(hidden_size=8, seed=2)
    path = tmp_path / "other.npz"
    checkpoint.save(path, other.params, {}, {"model": other.config})
    before = {k: v.copy() for k, v in model.params.items()}
    params, _, _, _ = checkpoint.load(path)
    with pytest.raises(checkpoint.CheckpointError, match=r"lstm\.w_ih is"):
        checkpoint.validate_params(path, params, model.params)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(truncated)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(rng.bytes(1000))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(garbage)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, before[k])
    refused = cli(str(truncated), module="lstmcore.evaluate")
    assert refused.returncode == 1 and "error: " in refused.stderr


def test_checkpoint_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    model = SequenceClassifier(hidden_size=8)
    for _ in range(3):
        checkpoint.save(tmp_path / "last.npz", model.params, {}, {"model": model.config})
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]
    assert os.path.getsize(tmp_path / "last.npz") > 0


def test_help_documents_every_flag() -> None:
    text = train.build_parser().format_help()
    for flag in [
        "--epochs",
        "--iters",
        "--batch-size",
        "--hidden",
        "--lr",
        "--optimizer",
        "--momentum",
        "--weight-decay",
        "--clip",
        "--schedule",
        "--seed",
        "--device",
        "--threads",
        "--data-dir",
        "--download",
        "--out",
        "--resume",
        "--quiet",
    ]:
        assert flag in text


# ---- flags the run or the data set cannot honour -------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--val-size", "60000"], "--val-size"),
        (["--val-size", "500", "--train-subset", "59600"], "--train-subset"),
    ],
)
def test_values_the_data_cannot_give_are_one_error_line(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    run = tmp_path / "run"
    done = cli(*flags, "--quiet", "--out", str(run))
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named} "), done.stderr
    assert not run.exists()  # refused before any work


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_forget_bias_is_a_usage_error(value: str) -> None:
    done = cli("--forget-bias", value)
    assert done.returncode == 2
    assert "--forget-bias" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run, copied by the tests that change it."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert train.main([*QUICK, "--epochs", "1", "--out", str(run)]) == 0
    return run


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_resume_refuses_flags_that_disagree_with_the_run(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(one_epoch_run, tmp_path / "run")
    before = (run / "last.npz").read_bytes()
    for flags, named in (
        (["--hidden", "999"], "--hidden"),
        (["--lr", "0.5"], "--lr"),
        (["--data-dir", str(tmp_path)], "--data-dir"),
        (["--out", str(tmp_path / "x")], "--out"),
    ):
        assert train.main(["--resume", str(run), "--quiet", *flags]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {named} "), err
    # the run's own values, given again, agree: no error
    assert train.main(["--resume", str(run), "--quiet", "--hidden", "32"]) == 0
    assert (run / "last.npz").read_bytes() == before


def test_resume_with_more_epochs_extends_the_run_and_says_so(
    one_epoch_run: Path, tmp_path: Path
) -> None:
    run = copy_run(one_epoch_run, tmp_path / "run")
    assert train.main(["--resume", str(run), "--quiet", "--epochs", "2"]) == 0
    assert [r["epoch"] for r in metrics(run)[:-1]] == [1, 2]
    saved = json.loads((run / "config.json").read_text())
    assert saved["epochs"] == 2
    assert any("--epochs 2" in note and "was 1" in note for note in saved["notes"]), saved


def test_an_existing_run_is_not_overwritten_without_asking(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_run(one_epoch_run, tmp_path / "run")
    before = (run / "metrics.jsonl").read_bytes()
    assert train.main([*QUICK, "--epochs", "1", "--seed", "3", "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0] and "--overwrite" in err[0], err
    assert (run / "metrics.jsonl").read_bytes() == before
    args = [*QUICK, "--epochs", "1", "--seed", "3", "--out", str(run), "--overwrite"]
    assert train.main(args) == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 3
    assert (run / "metrics.jsonl").read_bytes() != before


def test_a_run_directory_in_use_is_refused_naming_the_process(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lstmcore.run import RunLock

    run = copy_run(one_epoch_run, tmp_path / "run")
    (run / ".last.npz.abc.tmp").write_bytes(b"another process is writing this")
    with RunLock(run):
        assert train.main(["--resume", str(run), "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"process {os.getpid()}" in err[0], err
        # the holder's temporary file was left alone
        assert (run / ".last.npz.abc.tmp").exists()
    assert train.main(["--resume", str(run), "--quiet"]) == 0
    assert not (run / ".last.npz.abc.tmp").exists()  # stale once nobody holds the lock


def test_a_second_ctrl_c_exits_at_once() -> None:
    interrupt = train._Interrupt()
    interrupt(signal.SIGINT, None)
    assert interrupt.requested  # the first one asks the loop to save and stop
    with pytest.raises(KeyboardInterrupt):
        interrupt(signal.SIGINT, None)


# ---- evaluate: checkpoints are validated before anything is built ---------------------------


def forged(path: Path, **model: Any) -> Path:
    """A checkpoint of a small model whose metadata describes another one."""
    small = SequenceClassifier(hidden_size=8)
    checkpoint.save(path, small.params, {}, {"model": {**small.config, **model}})
    return path


@pytest.mark.parametrize(
    "model",
    [{"hidden_size": 150_000}, {"input_size": 10**9}, {"num_classes": -3}, {"hidden_size": "x"}],
    ids=["huge-hidden", "huge-input", "negative-classes", "not-a-number"],
)
def test_evaluate_checks_the_model_description_against_the_arrays(
    tmp_path: Path, model: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    from lstmcore import evaluate

    path = forged(tmp_path / "forged.npz", **model)
    assert evaluate.main([str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: "), err
    assert "does not match" in err[0] or "bad model description" in err[0], err


@pytest.mark.parametrize("kind", ["text", "npy", "pickle", "empty"])
def test_evaluate_names_a_file_that_is_not_a_checkpoint(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle

    from lstmcore import evaluate

    path = tmp_path / "thing"
    if kind == "text":
        path.write_text("hello\n")
    elif kind == "npy":
        np.save(path.with_suffix(".npy"), np.zeros(3))
        path = path.with_suffix(".npy")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"a": 1}))
    else:
        path.write_bytes(b"")
    assert evaluate.main([str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"error: {path}: not an lstmcore checkpoint", err


def test_a_forged_array_header_in_a_checkpoint_is_refused_before_allocation(
    tmp_path: Path,
) -> None:
    """An .npz member whose .npy header declares far more data than the member holds."""
    import zipfile

    path = forged(tmp_path / "ok.npz")
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "param/lstm.w_hh.npy":
                # same header length: the longer shape eats into the header's space padding
                grow = len(b"(10000000000, 8)") - len(b"(32, 8)")
                end = payload.index(b"\n")
                payload = payload[: end - grow] + payload[end:]
                payload = payload.replace(b"(32, 8)", b"(10000000000, 8)", 1)
            dst.writestr(info.filename, payload)
    with pytest.raises(checkpoint.CheckpointError, match=r"lstm\.w_hh.*declares"):
        checkpoint.load(bad)
