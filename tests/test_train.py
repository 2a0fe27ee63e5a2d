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
    with pytest.raises(checkpoint.CheckpointError, match=r"lstm\.weight_ih_l0 is"):
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
