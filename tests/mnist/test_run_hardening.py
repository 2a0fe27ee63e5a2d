"""Hardening of the run directory (issue 16): a resume validates everything it reads, the lock
never writes through a link, SIGTERM stops like Ctrl-C, and bad paths, floats and environment
variables are one line each."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_train import QUICK, TIMING_KEYS, metrics, small_dataset

from lstmcore.cli import train
from lstmcore.mnist import checkpoint
from lstmcore.mnist.run import Config, Run, RunError, RunLock, TrainingError

# ---- a small run, stopped mid-epoch: one epoch done, two of the next epoch's four batches ----

BATCHES = 4  # 40 images, 8 held out, batches of 8


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hardening")
    cfg = Config(
        epochs=3,
        batch_size=8,
        hidden=8,
        val_size=8,
        data_dir=str(small_dataset(root / "set", np.random.default_rng(0))),
    )
    with Run.create(cfg, root / "run") as run:
        assert not run.train(lambda: run.prog.step == BATCHES + 2)
    return root / "run"


def copy_of(base: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(base, run)
    return run


def resume_line(run: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a refused resume prints (status 1, nothing on stdout)."""
    assert train.main(["--resume", str(run), "--quiet"]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_the_unforged_run_resumes(base_run: Path, tmp_path: Path) -> None:
    """The control for the forgeries below: the same copy, untouched, goes on to the end."""
    run = copy_of(base_run, tmp_path)
    assert train.main(["--resume", str(run), "--quiet"]) == 0
    assert [row["step"] for row in metrics(run)[:-1]] == [4, 8, 12]


# ---- item 4: config.json's values through the command line's checks -------------------------

CONFIG_FORGERIES: list[tuple[str, Any]] = [
    ("batch_size", 0),  # was a ZeroDivisionError
    ("batch_size", -1),
    ("batch_size", True),
    ("batch_size", 2.5),
    ("batch_size", "8"),
    ("hidden", 0),
    ("layers", None),
    ("epochs", 0),
    ("iters", -3),
    ("optimizer", "lion"),  # silently ran Adam
    ("schedule", "linear"),  # silently ran cosine
    ("task", "bogus"),  # was a traceback
    ("lr", -1.0),
    ("lr", math.nan),
    ("lr", 1e39),  # inf in float32
    ("forget_bias", 1e39),
    ("momentum", "fast"),
    ("clip", math.inf),
    ("max_loss", -5),
    ("dropout", 1.0),
    ("chrono", 1),
    ("shift", 99),
    ("seed", -1),
    ("perm_seed", 1.5),
    ("train_subset", 0),
    ("download", "yes"),
    ("data_dir", 5),
    ("colour", "red"),  # no such setting
]


@pytest.mark.parametrize(("field", "value"), CONFIG_FORGERIES)
def test_a_forged_config_value_is_one_line_naming_the_file_and_the_field(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: Any
) -> None:
    run = copy_of(base_run, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, field: value}))
    before = (run / "last.npz").read_bytes()
    line = resume_line(run, capsys)
    assert f"{run / 'config.json'}: {field}: " in line, line
    assert (run / "last.npz").read_bytes() == before


def test_config_values_the_data_cannot_give_name_the_file(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = copy_of(base_run, tmp_path)
    saved = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**saved, "val_size": 10**6}))
    line = resume_line(run, capsys)
    assert line.startswith(f"error: {run / 'config.json'}: --val-size 1000000: "), line


def test_every_config_field_has_one_check() -> None:
    """The command line and a resume check the same table: it covers every field, and every
    default passes it."""
    from lstmcore.mnist.run import SETTINGS

    assert set(SETTINGS) == set(Config.__dataclass_fields__)
    for name, value in Config().__dict__.items():
        assert SETTINGS[name].check(value) == value


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "Expecting"),
        (b"\xff\xfe", "codec can't decode"),
        (b"[" * 100_000, "recursion"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "digits"),
        (b'{"notes": "x"}', "notes"),
        (b"{}" + b" " * (1 << 20), "larger than"),
    ],
    ids=["a list", "truncated", "not UTF-8", "nested deep", "long integer", "notes", "huge"],
)
def test_a_config_json_that_is_not_a_config_is_one_line(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    run = copy_of(base_run, tmp_path)
    (run / "config.json").write_bytes(content)
    line = resume_line(run, capsys)
    assert f"{run / 'config.json'}: " in line and problem in line, line


@pytest.mark.subprocess
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_config_json_that_is_not_a_regular_file_is_refused_unopened(
    base_run: Path, tmp_path: Path, kind: str
) -> None:
    """A FIFO hung the resume forever (a subprocess, so that a hang fails the test)."""
    run = copy_of(base_run, tmp_path)
    (run / "config.json").unlink()
    if kind == "fifo":
        os.mkfifo(run / "config.json")
    else:
        (run / "config.json").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "lstmcore.train", "--resume", str(run), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert f"{run / 'config.json'}: " in lines[0] and "not a regular file" in lines[0]


# ---- item 4: last.npz's progress, order and generator states against the run ----------------

Forgery = Callable[[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]], None]


def progress(**values: Any) -> Forgery:
    return lambda meta, opt, other: meta["progress"].update(values)


def history_row(i: int, **values: Any) -> Forgery:
    return lambda meta, opt, other: meta["progress"]["history"][i].update(values)


def meta_value(key: str, value: Any) -> Forgery:
    return lambda meta, opt, other: meta.update({key: value})


def array(group: str, key: str, value: Any) -> Forgery:
    def forge(meta: dict[str, Any], opt: dict[str, np.ndarray], other: dict[str, Any]) -> None:
        target = opt if group == "optim" else other
        if value is None:
            del target[key]
        else:
            target[key] = np.asarray(value)

    return forge


def mt19937_state(meta: dict[str, Any], opt: Any, other: Any) -> None:
    state = np.random.MT19937(0).state
    meta["rng"] = {**state, "state": {**state["state"], "key": state["state"]["key"].tolist()}}


PERMUTATION = np.random.default_rng(1).permutation(32)

PROGRESS_FORGERIES: dict[str, tuple[Forgery, str]] = {
    "negative step": (progress(step=-1), "progress.step"),
    "step ahead": (progress(step=10**6), "progress.step"),
    "step as float": (progress(step=6.0), "progress.step"),
    "step as bool": (progress(step=True), "progress.step"),
    "negative epoch": (progress(epoch=-1), "progress.epoch"),
    "epoch ahead of history": (progress(epoch=2), "progress.history"),
    "epoch_pos -5": (progress(epoch_pos=-5), "progress.epoch_pos"),  # trained 5 batches
    "epoch_pos beyond the epoch": (progress(epoch_pos=5, step=9), "progress.epoch_pos"),
    "epoch_pos and step disagree": (progress(epoch_pos=1), "progress.step"),
    "seen wrong": (progress(seen=3), "progress.seen"),
    "correct above seen": (progress(correct=17), "progress.correct"),
    "loss_sum nan": (progress(loss_sum=math.nan), "progress.loss_sum"),
    "seconds negative": (progress(seconds=-1.0), "progress.seconds"),
    "best_val 2": (progress(best_val=2.0), "progress.best_val"),
    "history not a list": (progress(history="x"), "progress.history"),
    "history row step 0": (history_row(0, step=0), "progress.history[0].step"),
    "history row epoch": (history_row(0, epoch=7), "progress.history[0].epoch"),
    "history row seconds": (history_row(0, seconds="x"), "progress.history[0].seconds"),
    "unknown progress field": (progress(speed=1), "progress.speed"),
    "no progress": (meta_value("progress", None), "progress"),
    "rng -1": (meta_value("rng", -1), "rng"),  # was a traceback
    "rng state -1": (
        lambda meta, opt, other: meta["rng"]["state"].update(state=-1),
        "rng",
    ),
    "rng of another generator": (mt19937_state, "rng"),
    "dropout_rng garbage": (meta_value("dropout_rng", {"bit_generator": "PCG64"}), "dropout_rng"),
    "order index 10**6": (array("other", "epoch_order", [10**6, *range(1, 32)]), "epoch_order"),
    "order all zero": (array("other", "epoch_order", np.zeros(32, np.int64)), "epoch_order"),
    "order of floats": (array("other", "epoch_order", PERMUTATION + 0.5), "epoch_order"),
    "order as bools": (array("other", "epoch_order", np.ones(32, bool)), "epoch_order"),
    "order too short": (array("other", "epoch_order", PERMUTATION[:31]), "epoch_order"),
    "order 2-D": (array("other", "epoch_order", PERMUTATION.reshape(4, 8)), "epoch_order"),
    "no order": (array("other", "epoch_order", None), "epoch_order"),
    "adam step -1": (array("optim", "step", np.int64(-1)), "optim/step"),
    "adam step float": (array("optim", "step", np.float64(6.5)), "optim/step"),
    "adam step vector": (array("optim", "step", np.arange(3)), "optim/step"),
}


@pytest.mark.parametrize("forgery", list(PROGRESS_FORGERIES))
def test_a_forged_progress_value_is_one_line_naming_the_file_and_the_field(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], forgery: str
) -> None:
    forge, field = PROGRESS_FORGERIES[forgery]
    run = copy_of(base_run, tmp_path)
    last = run / "last.npz"
    params, opt, meta, other = checkpoint.load(last)
    forge(meta, opt, other)
    checkpoint.save(last, params, opt, meta, other)
    before = last.read_bytes()
    line = resume_line(run, capsys)
    assert line.startswith(f"error: {last}: {field}"), line
    assert last.read_bytes() == before


# ---- item 7: the lock never writes through a link -------------------------------------------


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("command", ["--resume", "--out"])
def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], link: str, command: str
) -> None:
    """--out RUN is refused (it holds a run), but took the lock first: both wrote through."""
    run = copy_of(base_run, tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / ".lock").unlink()
    if link == "symlink":
        (run / ".lock").symlink_to(victim)
    else:
        os.link(victim, run / ".lock")
    assert train.main([command, str(run), "--quiet"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {run / '.lock'}: "), lines
    assert victim.read_text() == "precious\n"


def test_a_lock_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(RunError, match="not a regular file"), RunLock(tmp_path):
        pass


def test_the_lock_names_its_holder_once_held(tmp_path: Path) -> None:
    (tmp_path / ".lock").write_text("a stale holder line, much longer than the new one\n" * 9)
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"process {os.getpid()} ({' '.join(sys.argv)})\n"


# ---- item 10: SIGTERM stops like Ctrl-C -----------------------------------------------------

# 1000 steps, all in the first epoch (2000 batches of 10): a stop anywhere is mid-epoch
SIGTERM_RUN = [*QUICK, "--train-subset", "20000", "--batch-size", "10", "--iters", "1000"]


@pytest.mark.subprocess
def test_sigterm_saves_mid_epoch_and_the_run_resumes_where_it_was(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    assert train.main([*SIGTERM_RUN, "--out", str(whole)]) == 0
    run = tmp_path / "cut"
    # the progress bar on stderr: once it is drawn, the handlers are installed
    argv = [*SIGTERM_RUN, "--out", str(run)]
    argv[argv.index("--quiet")] = "--progress"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstmcore.train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    seen = b""
    while b"epoch 1/" not in seen:
        chunk = os.read(proc.stderr.fileno(), 4096)
        assert chunk, f"the run ended before training: {seen!r}"
        seen += chunk
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    err = (seen + rest).decode()
    assert proc.returncode == 143, err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    said = [line for line in lines if not line.startswith("epoch 1/")]  # not the bar's frames
    assert len(said) == 1 and re.fullmatch(
        rf"interrupted at step (\d+) \(SIGTERM\): saved {re.escape(str(run / 'last.npz'))}; "
        rf"continue with --resume {re.escape(str(run))}",
        said[0],
    ), said
    _, _, meta, _ = checkpoint.load(run / "last.npz")
    prog = meta["progress"]
    assert prog["epoch"] == 0 and 0 < prog["step"] == prog["epoch_pos"] < 1000, prog
    assert train.main(["--resume", str(run), "--threads", "1", "--quiet"]) == 0
    assert metrics(run) == metrics(whole)  # as if never stopped


def test_a_run_stopped_after_its_last_step_closes_that_epoch_on_resume(
    base_run: Path, tmp_path: Path
) -> None:
    """--iters 3 ends the run inside its first epoch; a stop after step 3 saved the epoch
    open, and the resume, finding the run finished, never closed it (no validation, no row)."""
    data_dir = json.loads((base_run / "config.json").read_text())["data_dir"]
    cfg = Config(iters=3, batch_size=8, hidden=8, val_size=8, data_dir=data_dir)
    with Run.create(cfg, tmp_path / "whole") as whole:
        assert whole.train()
    with Run.create(cfg, tmp_path / "cut") as cut:
        assert not cut.train(lambda: cut.prog.step == 3)
    with Run.resume(tmp_path / "cut") as resumed:
        assert resumed.train()
    untimed = [
        {k: v for k, v in row.items() if k not in TIMING_KEYS} for row in resumed.prog.history
    ]
    assert untimed == [
        {k: v for k, v in row.items() if k not in TIMING_KEYS} for row in whole.prog.history
    ]
    assert [row["step"] for row in untimed] == [3]


def test_a_second_sigterm_exits_at_once_with_its_status() -> None:
    interrupt = train._Interrupt()
    interrupt(signal.SIGTERM, None)
    assert interrupt.requested and interrupt.status == 143
    with pytest.raises(KeyboardInterrupt):
        interrupt(signal.SIGTERM, None)


# ---- item 11: a path that is not UTF-8, floats beyond float32, the environment ---------------


@pytest.mark.subprocess
def test_a_run_directory_whose_name_is_not_utf8_trains_and_resumes(
    base_run: Path, tmp_path: Path
) -> None:
    """The lock's holder line was a UnicodeEncodeError; stdout strict, as in en_US.UTF-8."""
    run = os.fsencode(tmp_path) + b"/run\xff"
    data_dir = json.loads((base_run / "config.json").read_text())["data_dir"]
    flags = ["--data-dir", data_dir, "--val-size", "8", "--hidden", "8", "--iters", "2"]
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    for argv in ([*flags, "--out", run], ["--resume", run, "--iters", "3"]):
        done = subprocess.run(
            [sys.executable, "-m", "lstmcore.train", "--threads", "1", *argv],
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert b"Traceback" not in done.stderr
    assert b"/run\\udcff at epoch 2, step 2" in done.stdout  # the byte as stderr shows it
    assert run in Path(os.fsdecode(run), ".lock").read_bytes()  # the holder's argv, as given


FLOAT_FLAGS = ["--lr", "--momentum", "--weight-decay", "--clip", "--forget-bias", "--max-loss"]


@pytest.mark.parametrize("name", FLOAT_FLAGS)
def test_a_float_flag_beyond_float32_is_a_usage_error(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--forget-bias 1e39 passed the finite check, then was inf in the float32 model."""
    with pytest.raises(SystemExit) as stopped:
        train.build_parser().parse_args([name, "1e39"])
    assert stopped.value.code == 2
    assert f"{name}: expected a number" in capsys.readouterr().err


def test_a_refused_save_or_a_diverged_step_says_which_checkpoints_are_kept(
    tmp_path: Path,
) -> None:
    """Both said the previous checkpoints were kept when there were none."""
    cfg = Config(train_subset=64, val_size=16, hidden=8, batch_size=32)
    none_yet = r"\(no checkpoint was saved before\)$"
    with Run.create(cfg, tmp_path / "run") as run:
        run.model.params["head.bias"][0] = np.inf
        with pytest.raises(TrainingError, match=rf"not saving best\.npz {none_yet}"):
            run.save(tmp_path / "run" / "best.npz", run.order)
        run.model.params["head.bias"][0] = 0.0
        run.save(tmp_path / "run" / "last.npz", run.order)
        run.model.params["head.bias"][0] = np.inf
        with pytest.raises(TrainingError, match=r"\(last\.npz holds the last good state\)$"):
            run.save(tmp_path / "run" / "best.npz", run.order)
    with (
        Run.create(replace(cfg, max_loss=0.0), tmp_path / "diverges") as run,
        pytest.raises(TrainingError, match=rf"^step 1: .*--max-loss 0 .*{none_yet}"),
    ):
        run.train()


COMMANDS = ["lstmcore", "lstmcore.train", "lstmcore.evaluate", "lstmcore.predict"]
COMMANDS += ["lstmcore.export", "lstmcore.bench"]


@pytest.mark.subprocess
@pytest.mark.parametrize("variable", ["LSTMCORE_NUM_THREADS=abc", "LSTMCORE_ISA=bogus"])
@pytest.mark.parametrize("module", COMMANDS)
def test_a_bad_environment_variable_is_one_line_in_every_command(
    module: str, variable: str
) -> None:
    name, value = variable.split("=")
    env = {**os.environ, name: value}
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {name}"), done.stderr


@pytest.mark.subprocess
def test_a_bad_environment_variable_still_raises_in_a_library() -> None:
    env = {**os.environ, "LSTMCORE_NUM_THREADS": "abc"}
    done = subprocess.run(
        [sys.executable, "-c", "import lstmcore"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("ValueError: LSTMCORE_NUM_THREADS")
