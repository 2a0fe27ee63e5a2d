"""A training run: its configuration, state, data, stepper and reporting, in one place.

``python -m lstmcore.train`` is a thin command line over this module: it turns flags into a
:class:`Config`, creates or resumes a :class:`Run`, trains it and prints its test result.

A run directory holds ``config.json``, ``metrics.jsonl``, ``last.npz`` and ``best.npz``, each
written atomically (``lstmcore._files``). ``last.npz`` holds everything a resume needs to
continue exactly as if never stopped: parameters, optimizer state, progress, the RNG state and
the current epoch's order.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import reprlib
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files, _precision, cuda, optim
from lstmcore._argtypes import expected_integer
from lstmcore.mnist import augment, checkpoint, data
from lstmcore.mnist.model import TASKS, Task, make_permutation, task_record
from lstmcore.mnist.report import accuracy_line, confusion_matrix, format_confusion
from lstmcore.mnist.stepper import Stepper, make_stepper
from lstmcore.nn import (
    MAX_CHRONO,
    SequenceClassifier,
    upgrade_v01_optim_state,
    upgrade_v01_params,
)

Array = NDArray[Any]

__all__ = [
    "CHECKPOINT_SECONDS",
    "OPTIMIZERS",
    "PRECISIONS",
    "RUN_FILES",
    "SCHEDULES",
    "SETTINGS",
    "TASK_DEFAULTS",
    "Config",
    "ConfigError",
    "Progress",
    "Reporter",
    "Run",
    "RunData",
    "RunError",
    "RunLock",
    "Setting",
    "SettingError",
    "TestResult",
    "TrainingError",
    "check_config",
    "check_setting",
    "load_run_data",
    "lr_for",
    "make_model",
    "make_optimizer",
    "unsupported_on_device",
]

RUN_FILES = ["config.json", "metrics.jsonl", "last.npz", "best.npz"]  # written atomically
OTHER_FILES = ["curves.png"]  # also replaced by --overwrite
LOCK_FILE = ".lock"

# the settings a resume may change; every other one is the run's own
EXTENDABLE = ("epochs", "iters")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


class ConfigError(ValueError):
    """A setting the run or its data cannot honour; the message names the flag."""


class SettingError(ConfigError):
    """A Config field holds a value it may not; ``name`` is the field, ``problem`` what it
    expects and got."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{flag(name)}: {problem}")
        self.name, self.problem = name, problem


class RunError(RuntimeError):
    """The run directory cannot be used: it holds another run, or another process has it."""


def flag(name: str) -> str:
    """The command-line flag of a Config field."""
    return "--" + name.replace("_", "-")


@dataclass
class Config:
    """Everything that defines a run's result (saved as config.json; a resume reads it back)."""

    # the default recipe (chosen on the validation split, seeds 0-2): 8 epochs of 128 with
    # random shifts of up to 2 pixels, Adam 5e-3 with cosine decay
    epochs: int = 8
    iters: int | None = None
    batch_size: int = 128
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    lr: float = 5e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float = 1.0
    schedule: str = "cosine"
    forget_bias: float = 1.0
    chrono: int = 0  # chrono initialisation for memories up to this many steps (0: off)
    max_loss: float = 100.0
    seed: int = 0
    val_size: int = 5000
    train_subset: int | None = None
    data_dir: str | None = None
    download: bool = False
    task: str = "rows"  # rows | pixels | permuted (lstmcore.model.Task)
    perm_seed: int = 0  # the permuted task's pixel order
    shift: int = 2  # augmentation: random shifts of up to this many pixels (CPU only)
    # the LSTM's GEMM arithmetic: fp32, or bf16 (bf16-rounded operands, float32 accumulation,
    # float32 parameters and optimizer state: checkpoints are the same either way)
    precision: str = "fp32"
    # early stopping: stop once validation accuracy has not improved for this many epochs
    # (0: off); the test set is still read once, by best.npz
    patience: int = 0


CHECKPOINT_SECONDS = (
    300.0  # last.npz within an epoch at least this often (train --checkpoint-minutes)
)

# Each task's own recipe: what `--task NAME` alone runs; every flag given still overrides.
# The pixel tasks are 784 steps long: no shifts (a moved image is another sequence entirely),
# chrono initialisation for memories of 784 steps (forget bias 1 learned slower), and what the
# search on the validation split chose for a 90-minute budget on 2 cores (docs/tasks.md): batch
# 16 (at T=784 a CPU step's cost is about proportional to the batch, so smaller batches buy more
# updates for the same minutes), Adam at 3e-3 (ahead of 1e-3 and 2e-3 at batch 16 and of 2e-3,
# 3e-3 and 5e-3 at batch 32; 5e-3 diverged at batch 128 in earlier runs), 14 epochs (batch 16
# costs a few percent more per image than 32) with the cosine schedule.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "rows": {},
    "pixels": {"lr": 3e-3, "batch_size": 16, "chrono": 784, "shift": 0, "epochs": 14},
    "permuted": {"lr": 3e-3, "batch_size": 16, "chrono": 784, "shift": 0, "epochs": 14},
}


# ---- settings: what each Config field may hold ----------------------------------------------

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = _precision.NAMES
MAX_SHIFT = 4  # MNIST's digits fit a 20x20 box centred in 28x28: larger moves would cut them
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Setting:
    """The values one setting may take: of ``kind`` (exactly: an int setting takes no bool)
    and such that ``accepts``, which ``expected`` says in words."""

    kind: type
    expected: str
    accepts: Callable[[Any], bool] = lambda value: True
    optional: bool = False  # None (not set) too

    @classmethod
    def integer(
        cls, minimum: int, maximum: int | None = None, *, optional: bool = False
    ) -> Setting:
        return cls(
            int,
            expected_integer(minimum, maximum),
            lambda v: minimum <= v and (maximum is None or v <= maximum),
            optional,
        )

    @classmethod
    def number(cls, minimum: float | None = None) -> Setting:
        # finite in float32, not only in float64: the parameters and the optimizer's
        # arithmetic are float32, where 1e39 is already inf
        at_least = "" if minimum is None else f" >= {minimum:g}"
        return cls(
            float,
            f"a number{at_least}, finite in float32",
            lambda v: abs(v) <= FLOAT32_MAX and (minimum is None or v >= minimum),  # NaN fails
        )

    @classmethod
    def one_of(cls, options: tuple[str, ...]) -> Setting:
        return cls(str, f"one of {', '.join(options)}", lambda v: v in options)

    def check(self, value: Any) -> Any:
        """``value`` if the setting may take it (an int given for a float as a float), else
        ValueError saying what it expects."""
        if value is None and self.optional:
            return None
        if self.kind is float and type(value) is int and abs(value) <= 2**1023:
            value = float(value)
        if type(value) is not self.kind or not self.accepts(value):
            raise ValueError(f"expected {self.expected}, got {reprlib.repr(value)}")
        return value


_BOOL = Setting(bool, "true or false")

# every Config field's values: the command line parses a flag's text as the kind, then checks
# it here, as a resume checks the values in config.json
SETTINGS: dict[str, Setting] = {
    "epochs": Setting.integer(1),
    "iters": Setting.integer(1, optional=True),
    "batch_size": Setting.integer(1),
    "hidden": Setting.integer(1),
    "layers": Setting.integer(1),
    "bidirectional": _BOOL,
    # 1 would drop every activation
    "dropout": Setting(float, "a probability in [0, 1)", lambda v: 0.0 <= v < 1.0),
    "lr": Setting.number(0),
    "optimizer": Setting.one_of(OPTIMIZERS),
    "momentum": Setting.number(0),
    "weight_decay": Setting.number(0),
    "clip": Setting.number(0),
    "schedule": Setting.one_of(SCHEDULES),
    "forget_bias": Setting.number(),
    "chrono": Setting(
        int, "0 (off) or an integer in [2, 2**53]", lambda v: v == 0 or 2 <= v <= MAX_CHRONO
    ),
    "max_loss": Setting.number(0),
    "seed": Setting.integer(0),
    "val_size": Setting.integer(0),
    "train_subset": Setting.integer(1, optional=True),
    "data_dir": Setting(str, "a directory", lambda v: "\0" not in v, optional=True),
    "download": _BOOL,
    "task": Setting.one_of(TASKS),
    "perm_seed": Setting.integer(0),
    "shift": Setting.integer(0, MAX_SHIFT),
    "precision": Setting.one_of(PRECISIONS),
    "patience": Setting.integer(0),
}


def check_setting(name: str, value: Any) -> Any:
    """``value`` as Config field ``name`` holds it; SettingError saying what it expects."""
    try:
        return SETTINGS[name].check(value)
    except ValueError as err:
        raise SettingError(name, str(err)) from None


def check_config(values: dict[str, Any]) -> Config:
    """A Config of ``values`` (some of its fields; the others keep their defaults), each
    through :func:`check_setting`; SettingError for a field Config does not have."""
    for name in values:
        if name not in SETTINGS:
            raise SettingError(name, "not a setting of this version of lstmcore")
    return Config(**{name: check_setting(name, value) for name, value in values.items()})


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resume continues exactly."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    epoch_pos: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # over the current epoch
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0  # training time so far, all sessions
    best_val: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RunData:
    """The run's splits: training (after --train-subset), validation and test."""

    train_x: NDArray[np.float32]
    train_y: NDArray[np.int64]
    val_x: NDArray[np.float32]
    val_y: NDArray[np.int64]
    test_x: NDArray[np.float32]
    test_y: NDArray[np.int64]
    num_classes: int
    task: Task = field(default_factory=Task)
    image_shape: tuple[int, int] = (28, 28)  # (rows, cols) of the images before the task

    @property
    def input_size(self) -> int:
        return int(self.train_x.shape[2])


@dataclass(frozen=True)
class TestResult:
    correct: int
    total: int
    predicted: NDArray[np.int64]


def make_task(cfg: Config, image_shape: tuple[int, int]) -> Task:
    if cfg.task == "permuted":
        return Task("permuted", make_permutation(image_shape[0] * image_shape[1], cfg.perm_seed))
    return Task(cfg.task)


def load_run_data(cfg: Config) -> RunData:
    """The splits as the task's sequences (B, T, I), converted once (a copy for permuted);
    ConfigError when the data set cannot be split as the config says."""
    mnist = data.load_mnist(cfg.data_dir, download_missing=cfg.download)
    available = len(mnist.train_images)
    if cfg.val_size >= available:
        raise ConfigError(
            f"--val-size {cfg.val_size}: the training set has {available} images; "
            f"at most {available - 1} can be held out"
        )
    train_x, train_y, val_x, val_y = data.split_validation(
        mnist.train_images, mnist.train_labels, cfg.val_size
    )
    if cfg.train_subset is not None:
        if cfg.train_subset > len(train_x):
            raise ConfigError(
                f"--train-subset {cfg.train_subset}: only {len(train_x)} training images "
                f"remain after --val-size {cfg.val_size}"
            )
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    shape = (int(train_x.shape[1]), int(train_x.shape[2]))
    task = make_task(cfg, shape)
    seq = task.sequences
    return RunData(
        seq(train_x),
        train_y,
        seq(val_x),
        val_y,
        seq(mnist.test_images),
        mnist.test_labels,
        mnist.num_classes,
        task,
        shape,
    )


def unsupported_on_device(cfg: Config, device: str) -> str | None:
    """Why the run ``cfg`` describes cannot train on ``device`` (the GPU table's refusal of
    the first setting it does not run, named as its flag), or None."""
    if device != "cuda":
        return None
    asked = (
        ("layers", cfg.layers > 1, f"--layers {cfg.layers}"),
        ("reverse", cfg.bidirectional, "--bidirectional"),
        ("bf16", cfg.precision == "bf16", "--precision bf16"),
        ("shift", cfg.shift > 0, f"--shift {cfg.shift}"),
    )
    for key, used, given in asked:
        if used:
            return cuda.gpu_feature(key).refusal(given, command_line=True)
    return None


def parameter_count(cfg: Config, input_size: int, num_classes: int) -> int:
    """The classifier's parameters (torch.nn.LSTM's per layer and direction: W_ih (4H, in),
    W_hh (4H, H), two biases (4H); then the head (C, H * directions) and its bias)."""
    directions = 2 if cfg.bidirectional else 1
    h = cfg.hidden
    first = directions * 4 * h * (input_size + h + 2)
    later = (cfg.layers - 1) * directions * 4 * h * (directions * h + h + 2)
    return first + later + num_classes * (directions * h + 1)


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the OS says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_model_fits(cfg: Config, input_size: int, num_classes: int) -> None:
    """ConfigError naming the size flags when the model could not fit in memory: parameters,
    gradients and two optimizer moments, 4 float32 copies. Checked before allocating, since a
    model of many small layers would otherwise be allocated layer by layer until the machine
    runs out of memory."""
    count = parameter_count(cfg, input_size, num_classes)
    need, have = 4 * 4 * count, physical_memory()
    if have is not None and need > have:
        sizes = (
            f"--layers {cfg.layers} --hidden {cfg.hidden}"
            if cfg.layers > 1
            else f"--hidden {cfg.hidden}"
        )
        raise ConfigError(
            f"{sizes}: {count:,} parameters need about {need / 2**30:,.0f} GiB with their "
            f"gradients and optimizer state, more than this machine's "
            f"{have / 2**30:,.0f} GiB of memory"
        )


def make_model(cfg: Config, input_size: int, num_classes: int, device: str) -> SequenceClassifier:
    problem = unsupported_on_device(cfg, device)
    if problem is not None:
        raise TrainingError(problem)
    check_model_fits(cfg, input_size, num_classes)
    return SequenceClassifier(
        input_size,
        cfg.hidden,
        num_classes,
        num_layers=cfg.layers,
        bidirectional=cfg.bidirectional,
        dropout=cfg.dropout,
        forget_bias=cfg.forget_bias,
        chrono=cfg.chrono,
        seed=cfg.seed,
        device=device,
        precision=None if cfg.precision == "fp32" else cfg.precision,
    )


def make_optimizer(cfg: Config, params: dict[str, Array]) -> optim.Optimizer:
    if cfg.optimizer == "sgd":
        return optim.SGD(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optim.Adam(
        params, cfg.lr, weight_decay=cfg.weight_decay, decoupled=cfg.optimizer == "adamw"
    )


def lr_for(cfg: Config, step: int, total: int) -> float:
    """The learning rate of (0-based) ``step`` of ``total``; step schedule: x0.1 each third."""
    return optim.lr_at(cfg.schedule, cfg.lr, step, total, step_size=max(total // 3, 1))


def printable(text: str, stream: TextIO) -> str:
    """``text`` as ``stream`` can write it: a character its encoding lacks, such as a path's
    byte that is not UTF-8 (a surrogate escape), as a backslash escape, as Python's stderr
    writes it, rather than a UnicodeEncodeError."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)


class Reporter:
    """What a run prints while it trains: epoch lines and a progress bar on stderr, or nothing
    when quiet. The final result is printed by the caller, quiet or not."""

    def __init__(self, quiet: bool, progress: bool | None = None) -> None:
        self.quiet = quiet
        # a bar redrawn in place only where someone watches: in a log file its frames would
        # pile up as thousands of carriage-return lines
        self.progress = (not quiet) and (sys.stderr.isatty() if progress is None else progress)
        self._bar: Any = None
        self._started = 0.0
        self.eta: float | None = None  # training seconds left at this session's rate

    def say(self, text: str) -> None:
        if not self.quiet:
            from tqdm import tqdm

            tqdm.write(printable(text, sys.stdout))

    def start_epoch(self, epoch: int, epochs: int, batches: int, done: int) -> None:
        self._started = time.perf_counter()
        if not self.progress:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=batches,
            initial=done,
            leave=False,
            desc=f"epoch {epoch}/{epochs}",
            unit="batch",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def batch_done(self, prog: Progress, eta: float | None = None) -> None:
        self.eta = eta
        if self._bar is None:
            return
        elapsed = time.perf_counter() - self._started
        self._bar.update(1)
        self._bar.set_postfix(
            loss=f"{prog.loss_sum / prog.seen:.4f}",
            acc=f"{100 * prog.correct / prog.seen:.2f}%",
            rate=f"{prog.seen / max(elapsed, 1e-9):.0f}/s",
            eta=duration(eta),
            refresh=False,
        )

    def end_epoch(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def epoch_line(self, row: dict[str, Any]) -> None:
        self.say(
            f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  "
            f"train acc {100 * row['train_accuracy']:.2f}%  "
            f"val acc {100 * row['val_accuracy']:.2f}%  "
            f"{row['samples_per_s']:.0f} samples/s  {row['seconds']:.1f}s  eta {duration(self.eta)}"
        )


def duration(seconds: float | None) -> str:
    """A time left, in words a progress line can hold: 45s, 12m05s, 1h07m, or ? (unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RunLock:
    """An exclusive OS lock (``fcntl.flock``) on RUN_DIR/.lock while a process uses the run
    directory, so two processes never write (or clean up) each other's files. The file names
    the holder; the kernel releases the lock when the holder exits, however it exits."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(
                f"{self.path.parent} is in use by {holder}; wait for it to finish or stop it"
            ) from None
        # written only now, held and checked: the line names this process, argv as given
        # (fsencode: a path that is not UTF-8 goes back to its own bytes)
        os.ftruncate(fd, 0)
        os.write(fd, os.fsencode(f"process {os.getpid()} ({' '.join(sys.argv)})\n"))
        self._fd = fd

    def _open(self) -> int:
        """The lock file's descriptor, created if missing; RunError unless it is a regular
        file of one link. An untarred or shared run directory may hold a .lock that is a
        symbolic or hard link to any file the user can write, which the holder line would
        overwrite: O_NOFOLLOW, and fstat on what was opened. O_NONBLOCK: opening a FIFO
        never waits."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise RunError(self._refusal("a symbolic link")) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            kind = "not a regular file" if not stat.S_ISREG(info.st_mode) else "a hard link"
            raise RunError(self._refusal(kind))
        return fd

    def _refusal(self, kind: str) -> str:
        return (
            f"{self.path}: the run's lock file is {kind}; not using it (it would be "
            "overwritten): remove it and try again"
        )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Run:
    """One training run in ``run_dir``: create it with :meth:`create` or :meth:`resume`, then
    :meth:`train` and :meth:`test`; :meth:`close` (or a ``with`` block) releases the run
    directory's lock."""

    def __init__(
        self,
        cfg: Config,
        run_dir: Path,
        run_data: RunData,
        *,
        device: str = "cpu",
        tf32: bool = False,
        reporter: Reporter | None = None,
    ) -> None:
        check_config(asdict(cfg))  # from the API too: a bad value fails here, by its flag
        self.cfg, self.run_dir, self.data = cfg, run_dir, run_data
        self.device, self.tf32 = device, tf32
        self.reporter = reporter if reporter is not None else Reporter(quiet=True)
        self.model = make_model(cfg, run_data.input_size, run_data.num_classes, device)
        self.opt = make_optimizer(cfg, self.model.params)
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.prog = Progress()
        self.order = self.rng.permutation(len(run_data.train_x))
        self.notes: list[str] = []  # how a resume changed the settings (config.json)
        # a resume after a kill loses at most this much training (last.npz is saved then)
        self.checkpoint_seconds = CHECKPOINT_SECONDS
        self._session_steps = 0  # steps this process has run and the training seconds
        self._seconds_before = 0.0  # before them: the ETA runs at this session's rate
        self._stepper: Stepper | None = None
        self._lock = RunLock(run_dir)

    def close(self) -> None:
        self._lock.release()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- creation ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        cfg: Config,
        run_dir: Path,
        *,
        overwrite: bool = False,
        device: str = "cpu",
        tf32: bool = False,
        reporter: Reporter | None = None,
    ) -> Run:
        """A new run: loads the data, makes and locks the directory and writes config.json.
        A directory already holding a run is refused (RunError) unless ``overwrite``."""
        run = cls(cfg, run_dir, load_run_data(cfg), device=device, tf32=tf32, reporter=reporter)
        run_dir.mkdir(parents=True, exist_ok=True)
        with run._closed_on_error():
            run._lock.acquire()
            existing = [n for n in RUN_FILES if (run_dir / n).exists()]
            if existing and not overwrite:
                resumable = (run_dir / "last.npz").exists()
                raise RunError(
                    f"{run_dir} already holds a run ({', '.join(existing)}): "
                    + (f"continue it with --resume {run_dir}, or " if resumable else "")
                    + "replace it with --overwrite"
                )
            for name in RUN_FILES + OTHER_FILES:
                (run_dir / name).unlink(missing_ok=True)
            _files.remove_stale_temporaries(run_dir, RUN_FILES)
            run.write_config()
        return run

    @classmethod
    def resume(
        cls,
        run_dir: Path,
        *,
        settings: dict[str, Any] | None = None,
        device: str = "cpu",
        tf32: bool = False,
        reporter: Reporter | None = None,
    ) -> Run:
        """The run saved in ``run_dir`` (its config.json and last.npz), ready to go on.
        ``settings`` (Config fields given again) must agree with the run's own, except
        --epochs and --iters, which extend or shorten it (noted in config.json)."""
        cfg, notes = read_config(run_dir)
        changes = changed_settings(cfg, settings or {})
        try:
            run = cls(
                apply_changes(cfg, changes),
                run_dir,
                load_run_data(cfg),
                device=device,
                tf32=tf32,
                reporter=reporter,
            )
        except ConfigError as err:  # the file's values (the data, the model's size), not flags
            raise checkpoint.CheckpointError(f"{run_dir / 'config.json'}: {err}") from err
        with run._closed_on_error():
            run._lock.acquire()
            run.restore(run_dir / "last.npz")
            run.reporter.say(f"resumed {run_dir} at epoch {run.prog.epoch}, step {run.prog.step}")
            _files.remove_stale_temporaries(run_dir, RUN_FILES)
            run.notes = notes + [
                f"resumed at step {run.prog.step} with {flag(k)} {new} (was {old})"
                for k, (old, new) in changes.items()
            ]
            if changes:
                run.write_config()
        return run

    def _closed_on_error(self) -> _CloseOnError:
        return _CloseOnError(self)

    def write_config(self) -> None:
        saved: dict[str, Any] = asdict(self.cfg)
        if self.notes:
            saved["notes"] = self.notes
        _files.write_text(self.run_dir / "config.json", json.dumps(saved, indent=2) + "\n")

    # ---- sizes ---------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train_x) / self.cfg.batch_size)

    @property
    def total_steps(self) -> int:
        cfg = self.cfg
        return cfg.iters if cfg.iters is not None else cfg.epochs * self.steps_per_epoch

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def finished(self) -> bool:
        return self.prog.step >= self.total_steps or self.stopped_early

    @property
    def stopped_early(self) -> bool:
        """--patience: the last `patience` epochs brought no better validation accuracy."""
        history = self.prog.history
        if self.cfg.patience == 0 or not history or self.prog.epoch_pos > 0:
            return False
        accuracies = [row["val_accuracy"] for row in history]
        best_epoch = accuracies.index(max(accuracies)) + 1  # the first epoch that reached it
        return self.prog.epoch - best_epoch >= self.cfg.patience

    def _session_seconds(self, now: float, started: float) -> float:
        return self.prog.seconds - self._seconds_before + (now - started)

    def eta_seconds(self, session_steps: int, session_seconds: float) -> float | None:
        """Training seconds left at this session's rate (None before its first step)."""
        if session_steps == 0:
            return None
        return (self.total_steps - self.prog.step) * session_seconds / session_steps

    # ---- training ------------------------------------------------------------------------------

    @property
    def stepper(self) -> Stepper:
        """Made on first use, after any restore, so the GPU starts from the restored state."""
        if self._stepper is None:
            self._stepper = make_stepper(
                self.device,
                self.model,
                self.opt,
                self.data.train_x,
                self.data.train_y,
                clip=self.cfg.clip,
                max_loss=self.cfg.max_loss,
                max_batch=self.cfg.batch_size,
                tf32=self.tf32,
                batch=self._batch if self.cfg.shift > 0 else None,
            )
        return self._stepper

    def _batch(self, idx: Array) -> Array:
        """A training batch with random shifts (--shift), as the task's sequences."""
        # drawn from the seed and the step alone, so a resumed run draws the same shifts
        rng = np.random.default_rng((self.cfg.seed, 1, self.prog.step))
        task, shape = self.data.task, self.data.image_shape
        if task.name == "rows":  # the sequences are the images: one gather by the core
            return augment.shifted_batch(self.data.train_x, idx, self.cfg.shift, rng)
        images = task.images(self.data.train_x[idx], shape)
        return task.sequences(augment.random_shift(images, self.cfg.shift, rng))

    def train(self, stop_requested: Callable[[], bool] = lambda: False) -> bool:
        """Trains to the end; True when finished, False when ``stop_requested()`` said so
        between two steps (last.npz then holds the state after that step)."""
        # an epoch begun is closed (validation, its row) even when the run is already finished:
        # it was stopped after its last step, or resumed with fewer --iters
        self._seconds_before = self.prog.seconds
        while not self.finished or self.prog.epoch_pos > 0:
            if not self._train_epoch(stop_requested):
                return False
        return True

    def _train_epoch(self, stop_requested: Callable[[], bool]) -> bool:
        prog, reporter = self.prog, self.reporter
        started = last_save = time.perf_counter()
        batches = data.batches(len(self.data.train_x), self.cfg.batch_size, self.order)
        reporter.start_epoch(prog.epoch + 1, self.epochs, len(batches), prog.epoch_pos)
        try:
            for idx in batches[prog.epoch_pos :]:
                if self.finished:
                    break
                self._step(idx)
                self._session_steps += 1
                now = time.perf_counter()
                reporter.batch_done(
                    prog, self.eta_seconds(self._session_steps, self._session_seconds(now, started))
                )
                stop = stop_requested()
                if stop or now - last_save >= self.checkpoint_seconds:
                    # a resume after a kill loses at most checkpoint_seconds of training
                    prog.seconds += now - started
                    started = last_save = now
                    self.stepper.sync()
                    self.save(self.run_dir / "last.npz", self.order)
                if stop:
                    return False
        finally:
            reporter.end_epoch()
        prog.seconds += time.perf_counter() - started
        self.stepper.sync()  # the host model and optimizer now hold the device's state
        self._finish_epoch()
        self.order = self.rng.permutation(len(self.data.train_x))
        prog.epoch_pos = 0
        self.save(self.run_dir / "last.npz", self.order)
        return True

    def _step(self, idx: Array) -> None:
        prog = self.prog
        lr = lr_for(self.cfg, prog.step, self.total_steps)
        loss, correct, problem = self.stepper.step(idx, lr)
        if problem is not None:
            raise TrainingError(
                f"step {prog.step + 1}: {problem}; training stopped ({self._kept()})"
            )
        prog.step += 1
        prog.epoch_pos += 1
        prog.loss_sum += loss * len(idx)
        prog.correct += correct
        prog.seen += len(idx)

    def _finish_epoch(self) -> None:
        prog, val_x, val_y = self.prog, self.data.val_x, self.data.val_y
        val_acc = float(np.mean(self.stepper.predict(val_x) == val_y)) if len(val_x) else math.nan
        prog.epoch += 1
        epoch_seconds = prog.seconds - (prog.history[-1]["seconds"] if prog.history else 0.0)
        row = {
            "epoch": prog.epoch,
            "step": prog.step,
            "train_loss": prog.loss_sum / max(prog.seen, 1),
            "train_accuracy": prog.correct / max(prog.seen, 1),
            "val_accuracy": val_acc,
            "lr": lr_for(self.cfg, prog.step - 1, self.total_steps),  # the last step's
            "seconds": prog.seconds,
            "epoch_seconds": epoch_seconds,
            "samples_per_s": prog.seen / max(epoch_seconds, 1e-9),
        }
        prog.history.append(row)
        prog.loss_sum, prog.correct, prog.seen = 0.0, 0, 0
        self.reporter.epoch_line(row)
        is_best = len(val_x) == 0 or val_acc > prog.best_val
        if is_best:
            prog.best_val = val_acc
            # best.npz first: if we die between the two writes, last.npz still points before
            # this epoch
            self.save(self.run_dir / "best.npz", np.zeros(0, np.int64))
        self.write_metrics(prog.history)

    # ---- state on disk -------------------------------------------------------------------------

    def save(self, path: Path, order: Array) -> None:
        """A checkpoint of the whole state; refused (TrainingError) for a non-finite model."""
        for name, value in self.model.params.items():
            if not np.all(np.isfinite(value)):
                raise TrainingError(
                    f"step {self.prog.step}: parameter {name} is not finite; not saving "
                    f"{path.name} ({self._kept()})"
                )
        meta = {
            "config": asdict(self.cfg),
            "progress": asdict(self.prog),
            "rng": self.rng.bit_generator.state,
            # the dropout masks' generator: a resumed run draws the masks it would have drawn
            "dropout_rng": self.model.lstm.dropout_rng.bit_generator.state,
            "model": self.model.config,
        }
        task_meta, task_arrays = task_record(self.data.task, self.data.image_shape)
        meta["task"] = task_meta
        arrays = {"epoch_order": order, **task_arrays}
        checkpoint.save(path, self.model.params, self.opt.state_dict(), meta, arrays)

    def _kept(self) -> str:
        """What a stopped run or a refused save leaves on disk, in words."""
        kept = [name for name in ("last.npz", "best.npz") if (self.run_dir / name).is_file()]
        if not kept:
            return "no checkpoint was saved before"
        return f"{' and '.join(kept)} {'hold' if len(kept) > 1 else 'holds'} the last good state"

    def restore(self, path: Path) -> None:
        """Loads last.npz into model, optimizer, RNG and progress; nothing changes unless all
        of it is valid and fits this run (else CheckpointError naming the file and field)."""
        params, opt_state, meta, other = checkpoint.load(path)
        # lstmcore 0.1 wrote one bias under other names: the same model under today's names
        params, opt_state = upgrade_v01_params(params), upgrade_v01_optim_state(opt_state)
        n = len(self.data.train_x)
        # 0.1 had no dropout, hence no dropout generator: keep the fresh one
        fresh = self.model.lstm.dropout_rng.bit_generator.state
        states = {"rng": meta.get("rng"), "dropout_rng": meta.get("dropout_rng", fresh)}
        try:
            prog = check_progress(meta.get("progress"), n, self.cfg.batch_size)
            order = check_order(other.get("epoch_order"), n)
            for name, state in states.items():
                check_generator_state(name, state)
            self.opt.check_state(opt_state)
            check_optimizer_step(opt_state, prog.step)
        except ValueError as err:
            raise checkpoint.CheckpointError(f"{path}: {err}") from err
        checkpoint.assign_params(path, params, self.model.params)  # validates first
        self.opt.load_state_dict(opt_state)
        self.rng.bit_generator.state = states["rng"]
        self.model.lstm.dropout_rng.bit_generator.state = states["dropout_rng"]
        self.prog, self.order = prog, order

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        """metrics.jsonl, rewritten atomically from the history the checkpoint holds."""
        text = "".join(json.dumps(row) + "\n" for row in rows)
        _files.write_text(self.run_dir / "metrics.jsonl", text)

    # ---- the result ----------------------------------------------------------------------------

    def test(self) -> TestResult:
        """The best model's (best.npz) accuracy on the test set; writes the final metrics row
        and curves.png."""
        best = self.run_dir / "best.npz"
        if best.is_file():
            params, _, _, _ = checkpoint.load(best)
            checkpoint.assign_params(best, upgrade_v01_params(params), self.model.params)
        predicted = self.model.predict(self.data.test_x)
        correct = int((predicted == self.data.test_y).sum())
        total = len(self.data.test_y)
        final = {
            "test_accuracy": correct / max(total, 1),
            "test_correct": correct,
            "test_total": total,
            "model": "best.npz",
            "peak_rss_mb": peak_rss_mb(),
        }
        self.write_metrics([*self.prog.history, final])
        plot_curves(self.run_dir, self.prog.history)
        return TestResult(correct, total, predicted)

    def finish_untested(self) -> str:
        """--no-test: the final metrics row and curves.png without reading the test set; the
        line printed names the best validation accuracy and its epoch instead."""
        history = self.prog.history
        final: dict[str, Any] = {"model": "best.npz", "test": "not read (--no-test)"}
        scored = [row for row in history if not math.isnan(row["val_accuracy"])]
        if scored:
            best = max(scored, key=lambda row: row["val_accuracy"])  # the first of equals
            final.update(best_val_accuracy=best["val_accuracy"], best_epoch=best["epoch"])
        final["peak_rss_mb"] = peak_rss_mb()
        self.write_metrics([*history, final])
        plot_curves(self.run_dir, history)
        if not scored:
            return "no validation accuracy (--val-size 0); the test set was not read (--no-test)"
        return (
            f"best validation accuracy: {100.0 * final['best_val_accuracy']:.2f}% "
            f"(epoch {final['best_epoch']}); the test set was not read (--no-test)"
        )

    def report(self, result: TestResult) -> str:
        """The confusion matrix (unless quiet) and the accuracy line, as printed."""
        lines = []
        if not self.reporter.quiet:
            m = confusion_matrix(self.data.test_y, result.predicted, self.data.num_classes)
            lines.append(format_confusion(m))
        lines.append(accuracy_line(result.correct, result.total))
        return "\n".join(lines)


class _CloseOnError:
    """Releases the run's lock when setting the run up fails half-way."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:
            self.run.close()


CONFIG_LIMIT = 1 << 20  # bytes: a config.json is under 1 KiB


def read_config(run_dir: Path) -> tuple[Config, list[str]]:
    """The run's Config and the notes of earlier resumes that changed it; CheckpointError
    naming the file (and the field) for anything a run could not have written."""
    path = run_dir / "config.json"
    try:
        with _files.open_regular(path) as handle:  # a FIFO would block the open forever
            raw = handle.read(CONFIG_LIMIT + 1)
        if len(raw) > CONFIG_LIMIT:
            raise ValueError(f"larger than {CONFIG_LIMIT} bytes")
        # ValueError: not UTF-8 (as written; json would guess UTF-16 from some bytes), not
        # JSON, an integer of too many digits; RecursionError: nested too deep
        saved = json.loads(raw.decode("utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        notes = saved.pop("notes", [])
        if not isinstance(notes, list):
            raise ValueError("notes: not a list")
        return check_config(saved), [str(n) for n in notes]
    except SettingError as err:
        raise checkpoint.CheckpointError(f"{path}: {err.name}: {err.problem}") from err
    except (OSError, ValueError, RecursionError) as err:
        raise checkpoint.CheckpointError(f"{path}: cannot resume: {err}") from err


# ---- what a checkpoint's progress may hold: where this run could stand ------------------------


def _expect(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {reprlib.repr(value)}")


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


_PROGRESS_FIELDS = {f.name for f in fields(Progress)}
# the values of a history row that a resumed run reads back (epoch seconds, curves.png)
_ROW_NUMBERS = ("seconds", "train_loss", "train_accuracy", "val_accuracy")


def check_progress(saved: Any, n: int, batch_size: int) -> Progress:
    """``saved`` (a checkpoint's progress) as a Progress, if a run of ``n`` training images
    in batches of ``batch_size`` can stand there: every count in range, step and the epoch
    position consistent with the history; ValueError naming the field."""
    _expect("progress", saved, isinstance(saved, dict), "a mapping")
    unknown = sorted(saved.keys() - _PROGRESS_FIELDS)
    if unknown:
        raise ValueError(f"progress.{unknown[0]}: not a field of a run's progress")
    prog = Progress(**saved)

    def check(name: str, ok: bool, expected: str) -> None:
        _expect(f"progress.{name}", getattr(prog, name), ok, expected)

    for name in ("epoch", "step", "epoch_pos", "correct", "seen"):
        check(name, _is_count(getattr(prog, name)), "an integer >= 0")
    for name in ("loss_sum", "seconds"):
        value = getattr(prog, name)
        check(name, _is_number(value) and 0 <= value < math.inf, "a finite number >= 0")
    best = prog.best_val
    ok = _is_number(best) and (best == -1 or 0 <= best <= 1 or math.isnan(best))
    check("best_val", ok, "-1 (none yet), an accuracy in [0, 1], or NaN (no validation set)")
    batches = math.ceil(n / batch_size)
    check("epoch_pos", prog.epoch_pos <= batches, f"at most the {batches} batches of an epoch")
    done = _check_history(prog.history, prog.epoch, batches)
    step, pos = done + prog.epoch_pos, prog.epoch_pos
    check("step", prog.step == step, f"{step} ({done} in the completed epochs, epoch_pos {pos})")
    seen = min(pos * batch_size, n)
    check("seen", prog.seen == seen, f"{seen} (the images of epoch_pos {pos} batches)")
    check("correct", prog.correct <= seen, f"at most seen ({seen})")
    return prog


def _check_history(history: Any, epochs: int, batches: int) -> int:
    """The step count at the end of the last completed epoch, if ``history`` has one row per
    epoch (``epochs``), each ending 1 to ``batches`` steps after the one before (fewer than
    ``batches`` where the run reached --iters); ValueError naming the row."""
    if not (isinstance(history, list) and len(history) == epochs):
        got = f"{len(history)} rows" if isinstance(history, list) else reprlib.repr(history)
        raise ValueError(f"progress.history: expected {epochs} rows (progress.epoch), got {got}")
    step = 0
    for i, row in enumerate(history):
        where = f"progress.history[{i}]"
        _expect(where, row, isinstance(row, dict), "a mapping")
        _expect(f"{where}.epoch", row.get("epoch"), row.get("epoch") == i + 1, str(i + 1))
        end = row.get("step")
        ok = _is_count(end) and 1 <= end - step <= batches
        _expect(f"{where}.step", end, ok, f"an integer in [{step + 1}, {step + batches}]")
        for key in _ROW_NUMBERS:
            _expect(f"{where}.{key}", row.get(key), _is_number(row.get(key)), "a number")
        step = end
    return step


def check_order(order: Any, n: int) -> NDArray[np.int64]:
    """``order`` (the current epoch's, from a checkpoint) if it is a permutation of the ``n``
    training images; ValueError naming it."""
    shape = f"{order.shape} {order.dtype}" if isinstance(order, np.ndarray) else "none"
    if not (isinstance(order, np.ndarray) and order.dtype.kind in "iu" and order.shape == (n,)):
        raise ValueError(
            f"epoch_order: expected ({n},) integers (the training set's order), got {shape}"
        )
    if not np.array_equal(np.sort(order), np.arange(n)):
        raise ValueError(
            f"epoch_order: not a permutation of the {n} training images (an index is out of "
            "range or repeated)"
        )
    return order.astype(np.int64)


def check_generator_state(name: str, state: Any) -> None:
    """ValueError naming ``name`` unless ``state`` can be a NumPy generator's (tried on a
    scratch one: whatever the file holds, any error it causes is this error)."""
    try:
        np.random.default_rng().bit_generator.state = state
    except Exception as err:  # any type at all: the value came from a file
        raise ValueError(f"{name}: not a valid generator state ({err})") from None


def check_optimizer_step(opt_state: dict[str, Array], steps: int) -> None:
    """ValueError unless the optimizer's step count (Adam's bias correction), where it has
    one, is the run's ``steps``: every step the run counts was applied, and only those."""
    count = opt_state.get("step")
    if count is None:
        return
    integer = count.shape == () and count.dtype.kind in "iu"
    if not (integer and int(count) == steps):
        got = int(count) if integer else f"{count.shape} {count.dtype}"
        raise ValueError(f"optim/step: expected {steps} (progress.step), got {got}")


def changed_settings(cfg: Config, settings: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{field: (saved, given)} for the settings that differ from the run's; ConfigError for
    one that a resume may not change, naming its flag."""
    changes = {}
    for name, given in sorted(settings.items()):
        saved = getattr(cfg, name)
        if given == saved:
            continue
        if name not in EXTENDABLE:
            raise ConfigError(
                f"{flag(name)} {given}: the run has {flag(name)} {saved}, and a resumed run "
                "keeps its settings (only --epochs and --iters may change; start a new run "
                "with --out for other settings)"
            )
        changes[name] = (saved, given)
    if "epochs" in changes and "iters" not in settings and cfg.iters is not None:
        changes["iters"] = (cfg.iters, None)  # --epochs given: the run now counts epochs
    return changes


def apply_changes(cfg: Config, changes: dict[str, tuple[Any, Any]]) -> Config:
    return Config(**{**asdict(cfg), **{k: new for k, (_, new) in changes.items()}})


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """curves.png (loss and accuracy per epoch) when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="train loss", yscale="log")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in history], marker="o", label="val")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)")
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
