"""The tasks (rows, pixels, permuted) end to end, the trainer's shift augmentation and its
progress bar."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trained import final_metrics, trained_run

import lstmcore
from helpers import shifted_image
from lstmcore import cuda
from lstmcore.cli import evaluate, train
from lstmcore.mnist import augment, data, run
from lstmcore.mnist.model import Classifier, Task, make_permutation


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


TINY = (
    "--iters", "3", "--hidden", "8", "--batch-size", "16", "--train-subset", "64",
    "--val-size", "100",
)  # fmt: skip


@pytest.mark.parametrize("task", ["rows", "pixels", "permuted"])
def test_each_task_round_trips_through_checkpoint_evaluate_predict_and_export(
    task: str,
    tmp_path_factory: pytest.TempPathFactory,
    mnist: data.MnistData,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = trained_run(tmp_path_factory, (*TINY, "--task", task, "--perm-seed", "3"))
    model = lstmcore.load(run / "best.npz")
    steps, inputs = (28, 28) if task == "rows" else (784, 1)
    assert model.task.name == task and model.network.config["input_size"] == inputs
    images = mnist.test_images[:5]
    seq = model.task.sequences(images)
    assert seq.shape == (5, steps, inputs)
    if task == "permuted":
        perm = model.task.permutation
        np.testing.assert_array_equal(perm, make_permutation(784, 3))
        np.testing.assert_array_equal(seq[:, :, 0], images.reshape(5, -1)[:, perm])
    else:
        assert model.task.permutation is None
    # the trainer's test result and evaluate's (through lstmcore.load and predict) agree: one
    # task, applied alike
    correct = final_metrics(run)["test_correct"]
    capsys.readouterr()
    assert evaluate.main([str(run / "best.npz")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"test accuracy: {correct / 100:.2f}% ({correct}/10000)"
    onnxruntime = pytest.importorskip("onnxruntime")
    from lstmcore.mnist import export

    export.export(run / "best.npz", run / "m.onnx")
    session = onnxruntime.InferenceSession(str(run / "m.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": images})[0]
    assert np.abs(logits - model.logits(images)).max() <= 1e-4


def test_a_permuted_model_reads_pixels_in_its_own_order(
    tmp_path_factory: pytest.TempPathFactory, mnist: data.MnistData
) -> None:
    permuted = lstmcore.load(
        trained_run(tmp_path_factory, (*TINY, "--task", "permuted", "--perm-seed", "3"))
        / "best.npz"
    )
    # the same weights reading the pixels in reading order give other outputs
    plain = Classifier(permuted.network, Task("pixels"), permuted.image_shape)
    images = mnist.test_images[:20]
    assert np.abs(plain.logits(images) - permuted.logits(images)).max() > 1e-3
    reordered = np.empty_like(images.reshape(20, -1))
    reordered[:, :] = images.reshape(20, -1)[:, permuted.task.permutation]
    np.testing.assert_allclose(
        plain.logits(reordered.reshape(20, 28, 28)), permuted.logits(images), atol=1e-6
    )


def test_task_images_inverts_sequences(rng: np.random.Generator) -> None:
    images = rng.random((4, 5, 6), dtype=np.float32)
    for task in (Task("rows"), Task("pixels"), Task("permuted", rng.permutation(30))):
        seq = task.sequences(images)
        np.testing.assert_array_equal(task.images(seq, (5, 6)), images)


def test_bad_tasks_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown task 'columns'"):
        Task("columns")
    with pytest.raises(ValueError, match="permutation"):
        Task("permuted", np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="needed by, and only by"):
        Task("pixels", np.arange(3))


# ---- --shift ---------------------------------------------------------------------------------


def test_random_shift_moves_each_image_by_its_own_offset(rng: np.random.Generator) -> None:
    images = rng.random((64, 7, 9), dtype=np.float32)
    out = augment.random_shift(images, 2, np.random.default_rng(5))
    offsets = set()
    for img, moved in zip(images, out, strict=True):
        matches = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if np.array_equal(moved, shifted_image(img, dy, dx))
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 10  # offsets drawn per image, all 25 possible
    assert augment.random_shift(images, 0, np.random.default_rng(5)) is images


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_shift", [0, 1, 3])
def test_shifted_batch_gathers_and_moves_time_major(
    rng: np.random.Generator, dtype: type, max_shift: int
) -> None:
    """Image idx[b] moved by the b-th offsets drawn from the generator (all rows' first, then
    all columns'), against the plain reference."""
    images = rng.random((50, 7, 9)).astype(dtype)
    idx = rng.integers(0, 50, 33)
    got = augment.shifted_batch(images, idx, max_shift, np.random.default_rng(11))
    draws = np.random.default_rng(11)
    s = max_shift
    dy = draws.integers(-s, s + 1, 33) if s else np.zeros(33, int)
    dx = draws.integers(-s, s + 1, 33) if s else np.zeros(33, int)
    want = np.stack([shifted_image(images[k], y, x) for k, y, x in zip(idx, dy, dx, strict=True)])
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert got.transpose(1, 0, 2).flags.c_contiguous  # time-major underneath


def test_shifted_batch_checks_its_arguments(rng: np.random.Generator) -> None:
    from lstmcore._native import core

    images = rng.random((4, 5, 6), dtype=np.float32)
    far = np.array([10**18, -(10**18)], dtype=np.int64)  # moved out of the image: zeros
    out = core.shifted_batch(images, np.array([0, 3]), far, far[::-1].copy())
    assert out.shape == (5, 2, 6) and not out.any()
    with pytest.raises(ValueError, match=r"idx: 4 at position 1 is outside \[0, 4\)"):
        core.shifted_batch(images, np.array([0, 4]), np.zeros(2, np.int64), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"dy: expected shape \(2,\) int64, got \(3,\) int64"):
        core.shifted_batch(images, np.array([0, 1]), np.zeros(3, np.int64), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="images: expected dtype float32 or float64"):
        core.shifted_batch(images.astype(np.uint8), np.array([0]), np.zeros(1, np.int64),
                           np.zeros(1, np.int64))  # fmt: skip


def test_shift_is_reproducible_and_changes_training(tmp_path: Path) -> None:
    flags = ["--iters", "6", "--hidden", "8", "--batch-size", "16", "--train-subset", "96"]
    flags += ["--val-size", "100", "--quiet", "--threads", "1"]
    losses = {}
    for name, shift in (("a", "2"), ("b", "2"), ("none", "0")):
        out = tmp_path / name
        assert train.main([*flags, "--shift", shift, "--out", str(out)]) == 0
        losses[name] = final_metrics(out)["test_correct"], _history(out)
    assert losses["a"] == losses["b"]
    assert losses["a"] != losses["none"]


def _history(run_dir: Path) -> list[float]:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


@pytest.mark.subprocess
def test_shift_with_cuda_is_one_clear_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lstmcore.train", "--device", "cuda", "--shift", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == ""
    refusal = cuda.gpu_feature("shift").refusal("--shift 1", command_line=True)
    assert done.stderr == f"error: {refusal}\n"


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["5", "100", "-1"])
def test_shift_beyond_the_digits_margin_is_a_usage_error(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lstmcore.train", "--shift", value],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert f"--shift: expected an integer in [0, 4], got '{value}'" in done.stderr
    assert "Traceback" not in done.stderr


# ---- the progress bar ------------------------------------------------------------------------

TIMING = re.compile(r"\d+ samples/s +[\d.]+s  eta \S+$")  # the measured part of an epoch line


def test_progress_bar_only_on_a_terminal_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty)
        assert run.Reporter(quiet=False).progress is tty
        assert run.Reporter(quiet=False, progress=True).progress is True
        assert run.Reporter(quiet=False, progress=False).progress is False
        assert run.Reporter(quiet=True, progress=True).progress is False


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_log_file_gets_epoch_lines_and_no_bar_frames(tmp_path: Path) -> None:
    flags = ["--iters", "4", "--hidden", "8", "--batch-size", "16", "--train-subset", "32"]
    flags += ["--val-size", "100", "--threads", "1"]
    outputs = {}
    for mode in ("--no-progress", "--progress"):
        done = subprocess.run(
            [sys.executable, "-m", "lstmcore.train", *flags, mode, "--out", str(tmp_path / mode)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        outputs[mode] = done
    quiet_log, bar_log = outputs["--no-progress"], outputs["--progress"]
    assert quiet_log.stderr == "" and "\r" not in quiet_log.stdout
    assert "batch/s" in bar_log.stderr  # the bar (text mode reads its "\\r" as newlines)
    # the epoch lines and the result do not depend on the bar
    lines = [TIMING.sub("", line) for line in quiet_log.stdout.splitlines()]
    assert lines[0].startswith("epoch   1  train loss")
    assert lines == [TIMING.sub("", line) for line in bar_log.stdout.splitlines()]
    assert lines[-1].startswith("test accuracy: ")
