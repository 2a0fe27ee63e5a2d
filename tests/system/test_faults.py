"""Faults: divergence, NaN data, SIGKILL at every kind of moment, a full or read-only disk, memory
growth over long runs, and concurrent training in two Python threads."""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import run_module
from lstmcore import _files, optim
from lstmcore.cli import train
from lstmcore.mnist import checkpoint
from lstmcore.nn import SequenceClassifier

SMALL = [
    "--train-subset",
    "600",
    "--val-size",
    "200",
    "--hidden",
    "16",
    "--batch-size",
    "40",
    "--threads",
    "1",
    "--quiet",
]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_module("lstmcore.train", *args, timeout=timeout)


def assert_complete(path: Path, like: SequenceClassifier) -> dict[str, Any]:
    """The checkpoint loads and holds a full, finite model; returns its metadata."""
    params, _, meta, _ = checkpoint.load(path)
    checkpoint.validate_params(path, params, like.params)
    return meta


@pytest.mark.subprocess
def test_diverging_run_stops_and_keeps_the_last_good_checkpoints(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = cli(*SMALL, "--epochs", "3", "--lr", "100", "--clip", "0", "--out", str(run))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: step "), done.stderr
    assert "diverging" in lines[0] or "not finite" in lines[0] or "loss is" in lines[0]
    model = SequenceClassifier(hidden_size=16)
    for name in ("last.npz", "best.npz"):
        if (run / name).exists():  # written only if an epoch ended before the divergence
            assert_complete(run / name, model)


def write_float_dataset(directory: Path, with_nan: bool) -> None:
    rng = np.random.default_rng(5)
    images = rng.random((60, 28, 28)).astype(">f4")
    if with_nan:
        images[7, 3, 3] = np.nan
    labels = rng.integers(0, 10, 60).astype(np.uint8)
    for prefix in ("train", "t10k"):
        for name, array, code in (
            (f"{prefix}-images-idx3-ubyte", images, 0x0D),
            (f"{prefix}-labels-idx1-ubyte", labels, 0x08),
        ):
            header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            (directory / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes()))


def write_uint8_dataset(directory: Path, n_train: int) -> Path:
    """MNIST-format files of random 28x28 images, every class present."""
    rng = np.random.default_rng(6)
    directory.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", 50)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, array in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes()
            (directory / f"{name}.gz").write_bytes(gzip.compress(header + array.tobytes(), 1))
    return directory


def train_on(directory: Path, run: Path) -> subprocess.CompletedProcess[str]:
    return cli(
        "--data-dir",
        str(directory),
        "--val-size",
        "10",
        "--batch-size",
        "10",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        str(run),
    )


@pytest.mark.subprocess
def test_nan_in_the_data_stops_naming_the_step(tmp_path: Path) -> None:
    write_float_dataset(tmp_path, with_nan=True)
    done = train_on(tmp_path, tmp_path / "run")
    assert done.returncode == 1
    assert re.fullmatch(r"error: step \d+: loss is nan; .*\n", done.stderr), done.stderr
    clean = tmp_path / "clean"
    clean.mkdir()
    write_float_dataset(clean, with_nan=False)
    ok = train_on(clean, tmp_path / "run2")
    assert ok.returncode == 0, ok.stderr


# The moments a kill is sent at, each one an event seen in the run directory from outside (the
# process is watched, never slept on): at once (Python still starting), while a checkpoint's
# temporary file exists (mid-write), right after last.npz was renamed into place, and right
# after a metrics row was written (between saves).
KILL_MOMENTS = ("at start", "mid-write", "after rename", "after metrics row")


class RunDirectory:
    """What a training run's directory shows from outside, read without opening its files."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def inode(self, name: str) -> int | None:
        try:
            return (self.path / name).stat().st_ino  # a new file, so a new inode, per rename
        except FileNotFoundError:
            return None

    def size(self, name: str) -> int:
        try:
            return (self.path / name).stat().st_size
        except FileNotFoundError:
            return 0

    def temporaries(self) -> list[Path]:
        return sorted(self.path.glob(f".*{_files.TEMP_SUFFIX}"))


def wait_for(proc: subprocess.Popen[str], what: str, happened: Callable[[], bool]) -> None:
    """Polls (every 0.2 ms) until ``happened()``; fails if the run exits first or takes > 120 s."""
    deadline = time.monotonic() + 120
    while not happened():
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {what}: {proc.stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within 120 s")
        time.sleep(0.0002)


def kill_at(proc: subprocess.Popen[str], moment: str, run: RunDirectory) -> bool:
    """Waits for ``moment``, sends SIGKILL; True when a temporary was on disk at the kill."""
    if moment == "mid-write":
        wait_for(proc, "a run file being written", lambda: bool(run.temporaries()))
    elif moment == "after rename":
        before = run.inode("last.npz")
        wait_for(proc, "last.npz renamed into place", lambda: run.inode("last.npz") != before)
    elif moment == "after metrics row":
        rows = run.size("metrics.jsonl")
        wait_for(proc, "a metrics row", lambda: run.size("metrics.jsonl") > rows)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return bool(run.temporaries())  # read after the process is gone: nothing can change it


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkill_at_every_kind_of_moment_never_leaves_a_partial_checkpoint(tmp_path: Path) -> None:
    """24 kills, six at each moment of KILL_MOMENTS; after each, every checkpoint on disk is
    complete, the metrics are whole epochs in order, and --resume goes on from a later step; a
    temporary left by a mid-write kill is gone once the next run has saved."""
    run = tmp_path / "run"
    watched = RunDirectory(run)
    model = SequenceClassifier(hidden_size=16)
    data_dir = write_uint8_dataset(tmp_path / "data", n_train=500)
    fresh = [*SMALL[4:], "--data-dir", str(data_dir), "--val-size", "100", "--epochs", "100000"]
    resumed_from: list[int] = []
    left_mid_write, stale = 0, []
    for moment in KILL_MOMENTS * 6:
        started = (run / "last.npz").exists()
        if moment != "at start" and not started:
            moment = "after rename"  # the moments after a save need a run that has saved
        cmd = ["--resume", str(run), "--threads", "1", "--quiet"] if started else fresh
        if not started:
            cmd = [*cmd, "--out", str(run), "--overwrite"]
        saved_before = watched.inode("last.npz")
        with subprocess.Popen(
            [sys.executable, "-m", "lstmcore.train", *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            temporary_at_kill = kill_at(proc, moment, watched)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (moment, proc.returncode, err)
        if watched.inode("last.npz") != saved_before:  # this run saved: it cleaned up first
            assert not set(stale) & set(watched.temporaries()), stale
        if moment == "mid-write" and temporary_at_kill:
            left_mid_write += 1
        stale = watched.temporaries()
        for name in ("last.npz", "best.npz"):
            if (run / name).exists():
                meta = assert_complete(run / name, model)
                if name == "last.npz":
                    resumed_from.append(meta["progress"]["step"])
        rows = (
            [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            if (run / "metrics.jsonl").exists()
            else []
        )
        epochs = [r["epoch"] for r in rows if "epoch" in r]
        assert epochs == list(range(1, len(epochs) + 1))
    assert left_mid_write >= 1, "no kill landed while a checkpoint was being written"
    assert len(resumed_from) >= 18 and resumed_from == sorted(resumed_from)
    assert resumed_from[-1] > resumed_from[0]  # resuming made progress across the kills


def interrupted_save(monkeypatch: pytest.MonkeyPatch, error: OSError) -> None:
    """Makes the next checkpoint write fail midway, as a full disk would."""
    real_savez = np.savez

    def failing_savez(file: Any, **arrays: Any) -> None:
        real_savez(file, **arrays)
        file.truncate(100)
        raise error

    monkeypatch.setattr(checkpoint.np, "savez", failing_savez)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        PermissionError(errno.EROFS, "Read-only file system"),
    ],
    ids=["full", "read-only"],
)
def test_a_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    model = SequenceClassifier(hidden_size=8)
    path = tmp_path / "last.npz"
    checkpoint.save(path, model.params, {}, {"model": model.config, "tag": "first"})
    before = path.read_bytes()
    interrupted_save(monkeypatch, error)
    with pytest.raises(OSError, match=error.strerror):
        checkpoint.save(path, model.params, {}, {"model": model.config, "tag": "second"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]


@pytest.mark.slow
def test_the_trainer_reports_a_failed_save_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train.main([*SMALL, "--epochs", "1", "--out", str(run)]) == 0
    before = (run / "last.npz").read_bytes()
    capsys.readouterr()
    interrupted_save(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    assert train.main(["--resume", str(run), "--quiet"]) == 0  # already done: nothing to save
    status = train.main([*SMALL, "--epochs", "1", "--out", str(tmp_path / "other")])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert (run / "last.npz").read_bytes() == before


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_resident_memory_stays_flat_over_2000_steps() -> None:
    """Bound: < 16 MiB growth from step 100 to step 2,000 (the buffers are reused)."""
    model = SequenceClassifier(28, 32, 10, seed=3)
    opt = optim.Adam(model.params, 1e-3)
    rng = np.random.default_rng(3)
    images = rng.random((32, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, 32)
    at: dict[int, float] = {}
    for step in range(1, 2001):
        model.loss_and_grads(images, labels)
        opt.step(model.grads)
        if step in (100, 2000):
            at[step] = resident_mib()
    assert at[2000] - at[100] < 16.0, at


def test_two_threads_training_two_models_match_sequential_training() -> None:
    rng = np.random.default_rng(9)
    batches = [
        (rng.random((16, 28, 28), dtype=np.float32), rng.integers(0, 10, 16)) for _ in range(15)
    ]

    def run(seed: int) -> dict[str, np.ndarray]:
        model = SequenceClassifier(28, 24, 10, seed=seed)
        opt = optim.Adam(model.params, 1e-2)
        for images, labels in batches:
            model.loss_and_grads(images, labels)
            opt.step(model.grads)
        return {k: v.copy() for k, v in model.params.items()}

    sequential = [run(1), run(2)]
    concurrent: list[dict[str, np.ndarray]] = [{}, {}]
    workers = [
        threading.Thread(target=lambda k=k: concurrent.__setitem__(k, run(k + 1))) for k in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for seq, con in zip(sequential, concurrent, strict=True):
        assert seq.keys() == con.keys()
        for name in seq:
            np.testing.assert_array_equal(seq[name], con[name])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    """Atomic writes create files as open() would (0666 less the umask), not mkstemp's 0600."""
    from lstmcore import _files

    old = os.umask(umask)
    try:
        _files.write_text(tmp_path / "config.json", "{}\n")
        checkpoint.save(tmp_path / "last.npz", {"a": np.zeros(2)}, {}, {})
    finally:
        os.umask(old)
    for name in ("config.json", "last.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


# ---- no non-finite model is ever written ------------------------------------------------------

SMALL_RUN = {"train_subset": 600, "val_size": 200, "hidden": 16, "batch_size": 40}  # 15 steps


def record_saves(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Every checkpoint the run writes, as (file name, parameters)."""
    saved: list[tuple[str, dict[str, np.ndarray]]] = []
    real_save = checkpoint.save

    def recording_save(path: Any, params: dict[str, np.ndarray], *args: Any, **kw: Any) -> None:
        saved.append((Path(path).name, {k: v.copy() for k, v in params.items()}))
        real_save(path, params, *args, **kw)

    monkeypatch.setattr(checkpoint, "save", recording_save)
    return saved


def test_a_run_that_saves_then_diverges_never_writes_a_non_finite_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1 ends and saves; at step 20 a gradient turns NaN. The run stops naming that
    step, and last.npz/best.npz still hold epoch 1's finite state."""
    from lstmcore.mnist.run import Config, Run, TrainingError

    saved = record_saves(monkeypatch)
    real = SequenceClassifier.loss_and_grads
    steps = 0

    def nan_at_step_20(self: SequenceClassifier, images: Any, labels: Any) -> tuple[float, int]:
        nonlocal steps
        steps += 1
        loss, correct = real(self, images, labels)
        if steps == 20:
            self.head.grads["bias"][3] = np.nan  # the loss itself stays finite
        return loss, correct

    monkeypatch.setattr(SequenceClassifier, "loss_and_grads", nan_at_step_20)
    with Run.create(Config(**SMALL_RUN, epochs=3), tmp_path / "run") as run:
        with pytest.raises(TrainingError, match=r"^step 20: gradient of head\.bias is not finite"):
            run.train()
    assert [name for name, _ in saved] == ["best.npz", "last.npz"]  # epoch 1 only
    for _, params in saved:
        assert all(np.all(np.isfinite(v)) for v in params.values())
    model = SequenceClassifier(hidden_size=16)
    for name in ("last.npz", "best.npz"):
        meta = assert_complete(tmp_path / "run" / name, model)
        assert meta["progress"]["step"] == 15


def test_a_non_finite_model_is_refused_at_save(tmp_path: Path) -> None:
    """The last guard: whatever let a NaN into the parameters, no checkpoint holds it, and the
    previous one is kept."""
    from lstmcore.mnist.run import Config, Run, TrainingError

    with Run.create(Config(**SMALL_RUN), tmp_path / "run") as run:
        path = tmp_path / "run" / "last.npz"
        run.save(path, run.order)
        before = path.read_bytes()
        run.model.params["lstm.weight_hh_l0"][0, 0] = np.inf
        with pytest.raises(TrainingError, match=r"parameter lstm\.weight_hh_l0 is not finite"):
            run.save(path, run.order)
    assert path.read_bytes() == before
