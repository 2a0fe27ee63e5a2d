"""``python -m lstmcore.train``: the row-by-row MNIST LSTM, trained by the C++ core.

Each 28x28 image is a sequence of 28 rows of 28 pixels (``--task pixels``: 784 pixels, one a
step; ``--task permuted``: the same in one fixed random order); one LSTM layer; its last hidden
state into a linear layer to the classes; softmax cross-entropy. The last line printed is
``test accuracy: XX.XX% (correct/total)``.

This module is the command line only: flags into a :class:`lstmcore.run.Config`, Ctrl-C
handling and exit statuses. The run itself is :class:`lstmcore.run.Run`.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lstmcore
from lstmcore import checkpoint, data
from lstmcore.model import TASKS
from lstmcore.run import Config, Reporter, Run, TrainingError

EXIT_INTERRUPTED = 130


def _int_at_least(minimum: int) -> Any:
    """An argparse type: an integer >= minimum, else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m lstmcore.train",
        description="Train the row-by-row MNIST LSTM (28 steps of 28 pixels) with lstmcore.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--epochs", type=positive_int, default=d.epochs, help="passes over the training set"
    )
    p.add_argument(
        "--iters",
        type=positive_int,
        default=None,
        help="training iterations (batches) in all; overrides --epochs",
    )
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="batch size")
    p.add_argument("--hidden", type=positive_int, default=d.hidden, help="LSTM hidden units")
    p.add_argument("--lr", type=non_negative_float, default=d.lr, help="peak learning rate")
    p.add_argument(
        "--optimizer",
        choices=["adam", "adamw", "sgd"],
        default=d.optimizer,
        help="adam (L2 weight decay), adamw (decoupled), or sgd",
    )
    p.add_argument(
        "--momentum",
        type=non_negative_float,
        default=d.momentum,
        help="SGD momentum (ignored by Adam)",
    )
    p.add_argument(
        "--weight-decay", type=non_negative_float, default=d.weight_decay, help="weight decay"
    )
    p.add_argument(
        "--clip",
        type=non_negative_float,
        default=d.clip,
        help="clip the global gradient norm to this (0: no clipping)",
    )
    p.add_argument(
        "--schedule",
        choices=["cosine", "step", "constant"],
        default=d.schedule,
        help="learning-rate schedule over the whole run (step: x0.1 after each third)",
    )
    p.add_argument(
        "--forget-bias",
        type=float,
        default=d.forget_bias,
        help="added to the forget gate's initial bias",
    )
    p.add_argument(
        "--max-loss",
        type=non_negative_float,
        default=d.max_loss,
        help="stop as diverged when a batch's mean loss exceeds this (chance is ln(classes))",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=d.seed,
        help="seed for initialisation and shuffling",
    )
    p.add_argument(
        "--val-size",
        type=non_negative_int,
        default=d.val_size,
        help="the last N training images are held out for validation",
    )
    p.add_argument(
        "--train-subset",
        type=positive_int,
        default=None,
        help="train on only the first N training images (quick checks)",
    )
    p.add_argument(
        "--task",
        choices=list(TASKS),
        default=d.task,
        help="rows: 28 steps of 28 pixels; pixels: 784 steps of 1 pixel; permuted: 784 steps "
        "of 1 pixel in one fixed random order (--perm-seed), stored in the checkpoint",
    )
    p.add_argument(
        "--perm-seed",
        type=non_negative_int,
        default=d.perm_seed,
        help="seed of the permuted task's pixel order",
    )
    p.add_argument(
        "--shift",
        type=non_negative_int,
        default=None,
        help=f"augmentation: move each training image by up to N pixels at random (default "
        f"{d.shift} on the CPU; 0, and only 0, with --device cuda)",
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
        type=positive_int,
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
        help="continue the run in RUN_DIR from its last.npz, with its saved config",
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
    """SIGINT sets a flag that the loop checks between steps, so a step is never cut in half."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def check_device(device: str) -> str | None:
    """None when training can run on ``device``, else the reason it cannot."""
    if device == "cpu":
        return None
    from lstmcore import cuda

    ok, reason = cuda.available()
    return None if ok else f"--device cuda: {reason}"


def config_from_args(args: argparse.Namespace) -> Config:
    values = {k: getattr(args, k) for k in asdict(Config()) if hasattr(args, k)}
    if values.get("shift") is None:
        # the GPU keeps the training set on the device: no per-batch augmentation there
        values["shift"] = 0 if args.device == "cuda" else Config().shift
    return Config(**values)


def open_run(args: argparse.Namespace) -> Run:
    reporter = Reporter(quiet=bool(args.quiet), progress=args.progress)
    if args.resume:
        return Run.resume(Path(args.resume), device=args.device, tf32=args.tf32, reporter=reporter)
    run_dir = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    return Run.create(
        config_from_args(args), run_dir, device=args.device, tf32=args.tf32, reporter=reporter
    )


def train(args: argparse.Namespace) -> int:
    run = open_run(args)
    interrupt = _Interrupt()
    previous_handler = signal.signal(signal.SIGINT, interrupt)
    try:
        finished = run.train(lambda: interrupt.requested)
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if not finished:
        last = run.run_dir / "last.npz"
        print(
            f"interrupted at step {run.prog.step}: saved {last}; "
            f"continue with --resume {run.run_dir}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(run.report(run.test()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_device(args.device)
    if args.device == "cuda" and args.shift:
        problem = "--shift needs --device cpu (the GPU path keeps the training set on the device)"
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.threads is not None:
        lstmcore.set_num_threads(args.threads)
    try:
        return train(args)
    except (data.DataError, checkpoint.CheckpointError, TrainingError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
