"""``python -m lstmcore.train``: the row-by-row MNIST LSTM, trained by the C++ core.

Each 28x28 image is a sequence of 28 rows of 28 pixels (``--task pixels``: 784 pixels, one a
step; ``--task permuted``: the same in one fixed random order); an LSTM (one layer by default;
more with --layers, both directions with --bidirectional); the top layer's last hidden states
into a linear layer to the classes; softmax cross-entropy. The last line printed is
``test accuracy: XX.XX% (correct/total)``.

This module is the command line only: flags into a :class:`lstmcore.run.Config`, Ctrl-C
handling and exit statuses. The run itself is :class:`lstmcore.run.Run`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lstmcore
from lstmcore import _argtypes
from lstmcore._argtypes import choices_metavar
from lstmcore.mnist import checkpoint, data
from lstmcore.mnist.model import TASKS
from lstmcore.mnist.run import (
    CHECKPOINT_SECONDS,
    MAX_SHIFT,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SETTINGS,
    TASK_DEFAULTS,
    Config,
    ConfigError,
    Reporter,
    Run,
    RunError,
    TrainingError,
    flag,
    unsupported_on_device,
)

# Ctrl-C, and what timeout, batch schedulers and docker stop send: either stops the run after
# its current step, saved
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def of(name: str) -> Callable[[str], Any]:
    """The argparse type of Config field ``name``: the text as the setting's kind, then
    :meth:`Setting.check` (the check a resumed run's config.json goes through)."""
    setting = SETTINGS[name]
    return _argtypes.parsed(lambda text: setting.check(setting.kind(text)), setting.expected)


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    recipes = "; ".join(
        f"--task {task}: " + (", ".join(f"{flag(k)} {v}" for k, v in values.items()) or "as shown")
        for task, values in TASK_DEFAULTS.items()
    )
    p = argparse.ArgumentParser(
        prog="python -m lstmcore.train",
        description="Train the row-by-row MNIST LSTM (28 steps of 28 pixels) with lstmcore.",
        epilog=f"Each task has its own recipe, used for every flag not given ({recipes}); "
        "the defaults shown are the rows task's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--epochs", type=of("epochs"), default=d.epochs, help="passes over the training set"
    )
    p.add_argument(
        "--iters",
        type=of("iters"),
        default=None,
        help="training iterations (batches) in all; overrides --epochs",
    )
    p.add_argument("--batch-size", type=of("batch_size"), default=d.batch_size, help="batch size")
    p.add_argument("--hidden", type=of("hidden"), default=d.hidden, help="LSTM hidden units")
    p.add_argument("--layers", type=of("layers"), default=d.layers, help="stacked LSTM layers")
    p.add_argument(
        "--bidirectional",
        action="store_true",
        help="each layer runs both directions; the classifier reads both final states",
    )
    p.add_argument(
        "--dropout",
        type=of("dropout"),
        default=d.dropout,
        help="dropout on each LSTM layer's output but the last (training only, torch's rule)",
    )
    p.add_argument("--lr", type=of("lr"), default=d.lr, help="peak learning rate")
    p.add_argument(
        "--optimizer",
        type=of("optimizer"),
        metavar=choices_metavar(OPTIMIZERS),
        default=d.optimizer,
        help="adam (L2 weight decay), adamw (decoupled), or sgd",
    )
    p.add_argument(
        "--momentum",
        type=of("momentum"),
        default=d.momentum,
        help="SGD momentum (ignored by Adam)",
    )
    p.add_argument(
        "--weight-decay", type=of("weight_decay"), default=d.weight_decay, help="weight decay"
    )
    p.add_argument(
        "--clip",
        type=of("clip"),
        default=d.clip,
        help="clip the global gradient norm to this (0: no clipping)",
    )
    p.add_argument(
        "--schedule",
        type=of("schedule"),
        metavar=choices_metavar(SCHEDULES),
        default=d.schedule,
        help="learning-rate schedule over the whole run (step: x0.1 after each third)",
    )
    p.add_argument(
        "--forget-bias",
        type=of("forget_bias"),
        default=d.forget_bias,
        help="added to the forget gate's initial bias (bias_ih + bias_hh: half to each)",
    )
    p.add_argument(
        "--chrono",
        type=of("chrono"),
        default=d.chrono,
        metavar="T",
        help="chrono initialisation for memories of up to T steps (the pixel tasks: 784): "
        "forget-gate biases log U(1, T-1), input-gate biases their negative, in place of "
        "--forget-bias (0: off)",
    )
    p.add_argument(
        "--max-loss",
        type=of("max_loss"),
        default=d.max_loss,
        help="stop as diverged when a batch's mean loss exceeds this (chance is ln(classes))",
    )
    p.add_argument(
        "--seed",
        type=of("seed"),
        default=d.seed,
        help="seed for initialisation, shuffling, shifts and dropout masks",
    )
    p.add_argument(
        "--val-size",
        type=of("val_size"),
        default=d.val_size,
        help="the last N training images are held out for validation",
    )
    p.add_argument(
        "--train-subset",
        type=of("train_subset"),
        default=None,
        help="train on only the first N training images (quick checks)",
    )
    p.add_argument(
        "--task",
        type=of("task"),
        metavar=choices_metavar(TASKS),
        default=d.task,
        help="rows: 28 steps of 28 pixels; pixels: 784 steps of 1 pixel; permuted: 784 steps "
        "of 1 pixel in one fixed random order (--perm-seed), stored in the checkpoint",
    )
    p.add_argument(
        "--perm-seed",
        type=of("perm_seed"),
        default=d.perm_seed,
        help="seed of the permuted task's pixel order",
    )
    p.add_argument(
        "--shift",
        type=of("shift"),
        default=None,
        help=f"augmentation: move each training image by up to N pixels at random, N in "
        f"[0, {MAX_SHIFT}]: MNIST's digits fit a 20x20 box centred in 28x28, so larger moves "
        f"would cut digits (default {d.shift} on the CPU; 0, and only 0, with --device cuda)",
    )
    p.add_argument(
        "--precision",
        type=of("precision"),
        metavar=choices_metavar(PRECISIONS),
        default=d.precision,
        help="the LSTM's GEMM arithmetic: fp32, or bf16 (operands rounded to bfloat16, "
        "float32 accumulation, parameters and optimizer state; checkpoints are float32 "
        "either way, and a resumed run keeps its precision)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train")
    p.add_argument(
        "--tf32",
        action="store_true",
        help="--device cuda: let cuBLAS use TF32 tensor cores for float32 GEMMs "
        "(faster, about 1e-3 relative error; off by default)",
    )
    p.add_argument(
        "--threads",
        type=_argtypes.threads(),
        default=None,
        help="CPU threads for the core (default: all cores, or LSTMCORE_NUM_THREADS)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory with the four MNIST-format files (default: bundled MNIST)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch the published MNIST's missing files (verified) into --data-dir; without "
        "--data-dir, into the cache directory ($LSTMCORE_DATA, else the platform's user cache)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="RUN_DIR",
        help="run directory for metrics and checkpoints (default: runs/<time>)",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its last.npz, with its saved config; "
        "--epochs and --iters may extend it (noted in its config.json), other run settings "
        "must agree with the saved ones",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in --out (without it, an existing run is refused)",
    )
    p.add_argument(
        "--patience",
        type=of("patience"),
        default=d.patience,
        help="stop once validation accuracy has not improved for N epochs (0: off)",
    )
    p.add_argument(
        "--checkpoint-minutes",
        type=_argtypes.duration("minutes"),
        default=CHECKPOINT_SECONDS / 60,
        help="save last.npz within an epoch at least this often: a resume after a kill "
        "loses at most that much training",
    )
    p.add_argument(
        "--no-test",
        action="store_true",
        help="end without reading the test set: the last line gives the best validation "
        "accuracy and its epoch (for choosing a recipe on validation alone; `python -m "
        "lstmcore.evaluate RUN/best.npz` reads the test set once, at the end)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final result")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the progress bar on stderr (default: only when stderr is a terminal); epoch "
        "lines and the result are printed either way",
    )
    return p


class _Interrupt:
    """The first stop signal (SIGINT or SIGTERM) sets a flag that the loop checks between
    steps, so a step is never cut in half and last.npz is saved; a second one exits at once,
    without saving."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int = signal.SIGINT  # the last one received

    @property
    def status(self) -> int:
        """The exit status a shell gives a process this signal ended: 128 + its number."""
        return 128 + self.signum

    def __call__(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


def check_device(device: str, cfg: Config | None = None) -> str | None:
    """None when training (the model ``cfg`` describes, if given) can run on ``device``, else
    the reason it cannot."""
    if device == "cpu":
        return None
    if cfg is not None and (problem := unsupported_on_device(cfg, device)) is not None:
        return problem
    from lstmcore import cuda

    ok, reason = cuda.available()
    return None if ok else f"--device cuda: {reason}"


def given_flags(argv: list[str] | None) -> set[str]:
    """The destinations of the flags written on the command line (not left at defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def config_from_args(args: argparse.Namespace, given: set[str]) -> Config:
    """The new run's Config: the flags given, else the task's own recipe (TASK_DEFAULTS),
    else Config's defaults."""
    values = {k: getattr(args, k) for k in asdict(Config()) if hasattr(args, k)}
    for name, value in TASK_DEFAULTS[args.task].items():
        if name not in given:
            values[name] = value
    if values.get("shift") is None:
        # the GPU keeps the training set on the device: no per-batch augmentation there
        values["shift"] = 0 if args.device == "cuda" else Config().shift
    return Config(**values)


def open_run(args: argparse.Namespace, given: set[str]) -> Run:
    reporter = Reporter(quiet=bool(args.quiet), progress=args.progress)
    options = {"device": args.device, "tf32": args.tf32, "reporter": reporter}
    if args.resume:
        if "out" in given:
            raise ConfigError(f"--out {args.out}: a resumed run stays in --resume {args.resume}")
        settings = {k: getattr(args, k) for k in given if k in asdict(Config())}
        return Run.resume(Path(args.resume), settings=settings, **options)
    run_dir = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    return Run.create(config_from_args(args, given), run_dir, overwrite=args.overwrite, **options)


def train(args: argparse.Namespace, given: set[str]) -> int:
    with open_run(args, given) as run:
        run.checkpoint_seconds = 60.0 * args.checkpoint_minutes
        interrupt = _Interrupt()
        previous = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
        try:
            finished = run.train(lambda: interrupt.requested)
        except KeyboardInterrupt:
            print(
                "error: interrupted again: stopped at once, without saving "
                f"(last.npz keeps the previous save; continue with --resume {run.run_dir})",
                file=sys.stderr,
            )
            return interrupt.status
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if not finished:
            name = signal.Signals(interrupt.signum).name
            print(
                f"interrupted at step {run.prog.step} ({name}): saved {run.run_dir / 'last.npz'}; "
                f"continue with --resume {run.run_dir}",
                file=sys.stderr,
            )
            return interrupt.status
        print(run.finish_untested() if args.no_test else run.report(run.test()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = given_flags(argv)
    # a new run's settings are checked here, before any work; a resumed one's when its config
    # is read
    problem = check_device(args.device, None if args.resume else config_from_args(args, given))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.threads is not None:
        lstmcore.set_num_threads(args.threads)
    try:
        return train(args, given)
    except (
        ConfigError,
        RunError,
        data.DataError,
        checkpoint.CheckpointError,
        TrainingError,
        OSError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except MemoryError as err:
        print(
            f"error: out of memory: {err} (a smaller --hidden or --batch-size needs less)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
