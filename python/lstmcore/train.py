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
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lstmcore
from lstmcore import checkpoint, data
from lstmcore.model import TASKS
from lstmcore.nn import MAX_CHRONO
from lstmcore.run import (
    Config,
    ConfigError,
    Reporter,
    Run,
    RunError,
    TrainingError,
    unsupported_on_device,
)

EXIT_INTERRUPTED = 130


def _int_at_least(minimum: int, maximum: int | None = None) -> Any:
    """An argparse type: an integer >= minimum (and <= maximum), else a usage error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            wanted = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"expected an integer {wanted}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1)


def chrono_steps(text: str) -> int:
    """An argparse type: 0 (off) or an integer in [2, 2**53]."""
    value: int = _int_at_least(0, MAX_CHRONO)(text)
    if value == 1:
        raise argparse.ArgumentTypeError(
            f"expected 0 (off) or an integer in [2, 2**53], got {text!r}"
        )
    return value


non_negative_int = _int_at_least(0)
# OpenBLAS's pool has 64 threads at most (more only warn); larger machines may use their cores
MAX_THREADS = max(64, os.cpu_count() or 1)
MAX_SHIFT = 4


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def probability(text: str) -> float:
    """An argparse type: a number in [0, 1) (1 would drop every activation)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
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
    p.add_argument("--layers", type=positive_int, default=d.layers, help="stacked LSTM layers")
    p.add_argument(
        "--bidirectional",
        action="store_true",
        help="each layer runs both directions; the classifier reads both final states",
    )
    p.add_argument(
        "--dropout",
        type=probability,
        default=d.dropout,
        help="dropout on each LSTM layer's output but the last (training only, torch's rule)",
    )
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
        type=finite_float,
        default=d.forget_bias,
        help="added to the forget gate's initial bias (bias_ih + bias_hh: half to each)",
    )
    p.add_argument(
        "--chrono",
        type=chrono_steps,
        default=d.chrono,
        metavar="T",
        help="chrono initialisation for memories of up to T steps (the pixel tasks: 784): "
        "forget-gate biases log U(1, T-1), input-gate biases their negative, in place of "
        "--forget-bias (0: off)",
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
        help="seed for initialisation, shuffling, shifts and dropout masks",
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
        type=_int_at_least(0, MAX_SHIFT),
        default=None,
        help=f"augmentation: move each training image by up to N pixels at random, N in "
        f"[0, {MAX_SHIFT}]: MNIST's digits fit a 20x20 box centred in 28x28, so larger moves "
        f"would cut digits (default {d.shift} on the CPU; 0, and only 0, with --device cuda)",
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
        type=_int_at_least(1, MAX_THREADS),
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
    """The first SIGINT sets a flag that the loop checks between steps, so a step is never cut
    in half and last.npz is saved; a second one exits at once, without saving."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
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


def config_from_args(args: argparse.Namespace) -> Config:
    values = {k: getattr(args, k) for k in asdict(Config()) if hasattr(args, k)}
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
    return Run.create(config_from_args(args), run_dir, overwrite=args.overwrite, **options)


def train(args: argparse.Namespace, given: set[str]) -> int:
    with open_run(args, given) as run:
        interrupt = _Interrupt()
        previous_handler = signal.signal(signal.SIGINT, interrupt)
        try:
            finished = run.train(lambda: interrupt.requested)
        except KeyboardInterrupt:
            print(
                "error: interrupted again: stopped at once, without saving "
                f"(last.npz keeps the previous save; continue with --resume {run.run_dir})",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
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
    problem = None
    if args.device == "cuda" and args.shift:
        problem = "--shift needs --device cpu (the GPU path keeps the training set on the device)"
    if problem is None:
        # a new run's model is checked here, before any work; a resumed one when its config is
        # read
        problem = check_device(args.device, None if args.resume else config_from_args(args))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    if args.threads is not None:
        lstmcore.set_num_threads(args.threads)
    try:
        return train(args, given_flags(argv))
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
