"""The training CLI end to end on small subsets: learning, resume, interrupts, errors."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_train import QUICK, cli, metrics, small_dataset

from helpers import REPO
from lstmcore import optim
from lstmcore.cli import evaluate, train
from lstmcore.mnist import checkpoint
from lstmcore.mnist.model import load_network
from lstmcore.mnist.run import Config, Run, make_model, make_optimizer
from lstmcore.mnist.stepper import CpuStepper, CudaStepper, divergence
from lstmcore.nn import SequenceClassifier


@pytest.mark.slow
@pytest.mark.subprocess
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


@pytest.mark.slow
def test_no_test_ends_on_the_best_validation_accuracy_without_reading_the_test_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def read_the_test_set(self: Run) -> None:
        raise AssertionError("--no-test read the test set")

    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(Run, "test", read_the_test_set)
        assert train.main([*QUICK, "--iters", "40", "--no-test", "--out", str(run)]) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    rows = metrics(run)
    epochs, final = rows[:-1], rows[-1]
    assert [r["epoch"] for r in epochs] == [1, 2]  # 40 steps of 50 over 1,500 images
    best = max(epochs, key=lambda r: r["val_accuracy"])
    assert last_line == (
        f"best validation accuracy: {100 * best['val_accuracy']:.2f}% (epoch {best['epoch']}); "
        "the test set was not read (--no-test)"
    )
    assert "test_accuracy" not in final
    assert final["best_epoch"] == best["epoch"]
    assert final["best_val_accuracy"] == best["val_accuracy"]
    # the test set, read once at the end, by the evaluator: the same model a normal run keeps
    assert train.main([*QUICK, "--iters", "40", "--out", str(tmp_path / "tested")]) == 0
    tested = capsys.readouterr().out.strip().splitlines()[-1]
    assert evaluate.main([str(run / "best.npz")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == tested


def test_no_test_without_a_validation_split_says_there_is_no_best_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = [*QUICK, "--val-size", "0", "--iters", "2", "--no-test", "--out", str(run)]
    assert train.main(argv) == 0
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert last_line == (
        "no validation accuracy (--val-size 0); the test set was not read (--no-test)"
    )
    final = metrics(run)[-1]
    assert final == {"model": "best.npz", "test": "not read (--no-test)"}  # timing keys dropped


@pytest.mark.slow
@pytest.mark.subprocess
def test_same_seed_gives_bit_identical_metrics(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert cli(*QUICK, "--epochs", "2", "--out", str(tmp_path / name)).returncode == 0
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")


@pytest.mark.slow
@pytest.mark.subprocess
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


@pytest.mark.subprocess
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


@pytest.mark.subprocess
def test_cuda_without_a_gpu_is_one_clear_line() -> None:
    done = cli("--device", "cuda")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda: ")


@pytest.mark.subprocess
def test_bad_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    for name in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    done = cli("--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "train-images-idx3-ubyte" in lines[0], done.stderr


@pytest.mark.subprocess
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


@pytest.mark.subprocess
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


FLAGS = [
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
    "--forget-bias",
    "--chrono",
    "--max-loss",
    "--seed",
    "--val-size",
    "--train-subset",
    "--device",
    "--tf32",
    "--threads",
    "--data-dir",
    "--download",
    "--out",
    "--resume",
    "--overwrite",
    "--quiet",
    "--layers",
    "--bidirectional",
    "--dropout",
    "--task",
    "--perm-seed",
    "--shift",
    "--progress",
    "--no-progress",
    "--precision",
    "--patience",
    "--checkpoint-minutes",
    "--no-test",
]


def test_help_documents_every_flag() -> None:
    """The parser has exactly these flags (a new one must be added here, and to the flag list
    of docs/training.md), --help explains each of them, and the docs name every one."""
    parser = train.build_parser()
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert sorted(o for a in actions for o in a.option_strings) == sorted(FLAGS)
    text = " ".join(parser.format_help().split())
    for action in actions:
        assert action.help and len(action.help) > 8, action.option_strings
        assert " ".join(action.help.split()[:3]) in text, action.option_strings
        assert action.option_strings[0] in text
    docs = (REPO / "docs" / "training.md").read_text()
    for option in FLAGS:
        assert f"`{option}" in docs, f"docs/training.md does not list {option}"


# ---- flags the run or the data set cannot honour -------------------------------------------


@pytest.mark.subprocess
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


@pytest.mark.subprocess
@pytest.mark.parametrize(
    "flags",
    [["--hidden", "200000"], ["--layers", "1000000"], ["--layers", "1000", "--hidden", "4096"]],
    ids=["1.2 TiB of weights", "0.5 TiB in a million small layers", "0.5 TiB in 1000 layers"],
)
def test_a_model_too_large_for_memory_is_one_error_line(tmp_path: Path, flags: list[str]) -> None:
    """Refused from its size before anything is allocated (many small layers would otherwise
    be allocated one by one until the machine runs out of memory)."""
    run = tmp_path / "run"
    done = cli(*flags, "--quiet", "--out", str(run), timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --"), done.stderr
    named = lines[0].split(": ")[1]
    for name, value in zip(flags[::2], flags[1::2], strict=True):
        assert f"{name} {value}" in named, lines[0]
    assert "memory" in lines[0] and not run.exists()


@pytest.mark.parametrize(
    ("layers", "bidirectional"), [(1, False), (3, False), (1, True), (2, True)]
)
def test_the_memory_check_counts_the_models_parameters(layers: int, bidirectional: bool) -> None:
    from lstmcore.mnist.run import parameter_count

    cfg = Config(hidden=7, layers=layers, bidirectional=bidirectional)
    model = make_model(cfg, 5, 3, "cpu")
    assert parameter_count(cfg, 5, 3) == sum(p.size for p in model.params.values())


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["0", "100000"])
def test_thread_counts_outside_the_pools_range_are_usage_errors(value: str) -> None:
    done = cli("--threads", value)
    assert done.returncode == 2
    assert "--threads" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_forget_bias_is_a_usage_error(value: str) -> None:
    done = cli("--forget-bias", value)
    assert done.returncode == 2
    assert "--forget-bias" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("value", ["1", "-2", "x", str(2**53 + 1), "9" * 400])
def test_chrono_outside_its_range_is_a_usage_error(value: str) -> None:
    done = cli("--chrono", value)
    assert done.returncode == 2
    assert "--chrono" in done.stderr and "Traceback" not in done.stderr


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
    # a run killed before its first save cannot be resumed: the line offers only --overwrite
    (run / "last.npz").rename(run / "kept.npz")
    assert train.main([*QUICK, "--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" not in err[0] and "--overwrite" in err[0], err
    (run / "kept.npz").rename(run / "last.npz")
    args = [*QUICK, "--epochs", "1", "--seed", "3", "--out", str(run), "--overwrite"]
    assert train.main(args) == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 3
    assert (run / "metrics.jsonl").read_bytes() != before


def test_a_run_directory_in_use_is_refused_naming_the_process(
    one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lstmcore.mnist.run import RunLock

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
    from lstmcore.cli import evaluate

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

    from lstmcore.cli import evaluate

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
            if info.filename == "param/lstm.weight_hh_l0.npy":
                # same header length: the longer shape eats into the header's space padding
                grow = len(b"(10000000000, 8)") - len(b"(32, 8)")
                end = payload.index(b"\n")
                payload = payload[: end - grow] + payload[end:]
                payload = payload.replace(b"(32, 8)", b"(10000000000, 8)", 1)
            dst.writestr(info.filename, payload)
    with pytest.raises(checkpoint.CheckpointError, match=r"lstm\.weight_hh_l0.*declares"):
        checkpoint.load(bad)


def test_evaluate_reads_another_data_dir(
    one_epoch_run: Path,
    tmp_path: Path,
    rng: np.random.Generator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lstmcore.cli import evaluate
    from lstmcore.mnist import data

    directory = small_dataset(tmp_path / "set", rng)
    assert evaluate.main([str(one_epoch_run / "best.npz"), "--data-dir", str(directory)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    model = load_network(str(one_epoch_run / "best.npz"))
    test = data.load_mnist(directory)
    correct = int((model.predict(test.test_images) == test.test_labels).sum())
    assert out[-1] == f"test accuracy: {100 * correct / 10:.2f}% ({correct}/10)"
    assert len(out) == 12  # the confusion matrix: a head and 10 rows
    narrow = small_dataset(tmp_path / "narrow", rng, cols=20)
    assert evaluate.main([str(one_epoch_run / "best.npz"), "--data-dir", str(narrow)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "images are (28, 20), the model reads (28, 28)" in err[0], err


# ---- the run in-process: iterations, schedules, optimizers, the divergence rule -------------

SMALL_RUN = {"train_subset": 600, "val_size": 200, "hidden": 16, "batch_size": 40}  # 15 steps


def trained(tmp_path: Path, **settings: Any) -> Run:
    with Run.create(Config(**{**SMALL_RUN, **settings}), tmp_path / "run") as run:
        assert run.train()
    return run


@pytest.mark.parametrize(("iters", "epoch_steps"), [(7, [7]), (20, [15, 20])])
def test_iters_counts_steps_across_epochs(
    tmp_path: Path, iters: int, epoch_steps: list[int]
) -> None:
    run = trained(tmp_path, iters=iters, epochs=50)
    assert run.prog.step == iters
    assert [row["step"] for row in run.prog.history] == epoch_steps


@pytest.mark.parametrize(
    ("schedule", "factors"), [("step", [1.0, 0.1, 0.01]), ("constant", [1.0, 1.0, 1.0])]
)
def test_step_and_constant_schedules_drive_the_optimizer(
    tmp_path: Path, schedule: str, factors: list[float]
) -> None:
    """Each epoch's row records the lr of its last step (steps 14, 29, 44 of 45; the step
    schedule decays x0.1 after each third)."""
    run = trained(tmp_path, epochs=3, lr=0.01, schedule=schedule)
    got = [row["lr"] for row in run.prog.history]
    assert got == pytest.approx([0.01 * f for f in factors], rel=1e-12)


def test_optimizer_flags_choose_the_update_rule() -> None:
    params = SequenceClassifier(hidden_size=4).params
    adam = make_optimizer(Config(optimizer="adam", weight_decay=0.1), params)
    adamw = make_optimizer(Config(optimizer="adamw", weight_decay=0.1), params)
    sgd = make_optimizer(Config(optimizer="sgd", momentum=0.5, weight_decay=0.1), params)
    assert isinstance(adam, optim.Adam) and not adam.decoupled
    assert isinstance(adamw, optim.Adam) and adamw.decoupled and adamw.weight_decay == 0.1
    assert isinstance(sgd, optim.SGD) and sgd.momentum == 0.5 and sgd.weight_decay == 0.1


def test_adamw_run_decays_the_weights_decoupled(tmp_path: Path) -> None:
    """Same seed, same weight decay: AdamW's parameters differ from Adam's after training."""
    adam = trained(tmp_path / "a", iters=5, optimizer="adam", weight_decay=0.5)
    adamw = trained(tmp_path / "w", iters=5, optimizer="adamw", weight_decay=0.5)
    assert not np.array_equal(
        adam.model.params["lstm.weight_hh_l0"], adamw.model.params["lstm.weight_hh_l0"]
    )


class FakeSession:
    """A device session whose gradients have the given loss and norm; records updates."""

    def __init__(self, loss: float, grad_norm: float) -> None:
        self.loss, self.grad_norm = loss, grad_norm
        self.applied: list[float] = []

    def compute(self, indices: np.ndarray) -> tuple[float, int, float]:
        return self.loss, 1, self.grad_norm

    def apply(self, lr: float) -> None:
        self.applied.append(lr)

    def push(self, model: SequenceClassifier, opt: optim.Optimizer) -> None:
        pass

    def pull(self, model: SequenceClassifier, opt: optim.Optimizer) -> None:
        pass

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.zeros(len(images), np.int64)


@pytest.mark.parametrize(
    ("loss", "grad_norm", "problem"),
    [
        (1.0, 2.0, None),
        (500.0, 2.0, "exceeds --max-loss 100"),
        (math.nan, 2.0, "loss is nan"),
        (1.0, math.inf, "a gradient is not finite"),
    ],
)
def test_the_gpu_stepper_applies_only_what_the_divergence_rule_allows(
    loss: float, grad_norm: float, problem: str | None
) -> None:
    """Bug 8: the device computes, the host rule decides, and only then is the update applied
    (it used to be applied on the device when the loss exceeded --max-loss)."""
    model = SequenceClassifier(hidden_size=4)
    session = FakeSession(loss, grad_norm)
    stepper = CudaStepper(model, optim.Adam(model.params), session, max_loss=100.0)
    _, _, got = stepper.step(np.arange(4), 0.25)
    assert got == problem if problem is None else problem in str(got)
    assert session.applied == ([0.25] if problem is None else [])


@pytest.mark.parametrize("max_loss", [100.0, 1e-6])
def test_the_cpu_stepper_follows_the_same_rule(rng: np.random.Generator, max_loss: float) -> None:
    model = SequenceClassifier(hidden_size=4)
    before = {k: v.copy() for k, v in model.params.items()}
    images = rng.random((8, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, 8)
    stepper = CpuStepper(
        model, optim.Adam(model.params), images, labels, clip=1.0, max_loss=max_loss
    )
    loss, _, problem = stepper.step(np.arange(8), 0.01)
    assert problem == divergence(loss, None, max_loss)
    changed = not np.array_equal(model.params["head.bias"], before["head.bias"])
    assert changed == (problem is None)


def test_a_second_ctrl_c_during_training_is_one_line_and_status_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The handler's KeyboardInterrupt, raised mid-step, ends the CLI with one line naming the
    run to resume, and the run directory's lock is released."""

    def second_ctrl_c(self: Run, stop_requested: Any = None) -> bool:
        signal.raise_signal(signal.SIGINT)  # the first: stop after this step
        signal.raise_signal(signal.SIGINT)  # the second, before the step ends
        raise AssertionError("not reached")

    monkeypatch.setattr(Run, "train", second_ctrl_c)
    run = tmp_path / "run"
    try:
        status = train.main([*QUICK, "--out", str(run)])
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped the CLI as a KeyboardInterrupt traceback")
    assert status == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: interrupted again"), err
    assert f"--resume {run}" in err[0]
    from lstmcore.mnist.run import RunLock

    with RunLock(run):  # free again
        pass
