"""``python -m lstmcore.train``: the row-by-row MNIST LSTM, trained by the C++ core.

Each 28x28 image is a sequence of 28 rows of 28 pixels; one LSTM layer; its last hidden state
into a linear layer to the classes; softmax cross-entropy. The last line printed is
``test accuracy: XX.XX% (correct/total)``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import lstmcore
from lstmcore import _files, checkpoint, data, optim
from lstmcore.nn import SequenceClassifier

Array = NDArray[Any]

EXIT_INTERRUPTED = 130
RUN_FILES = ["config.json", "metrics.jsonl", "last.npz", "best.npz"]  # written atomically


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


@dataclass
class Config:
    epochs: int = 10
    iters: int | None = None
    batch_size: int = 128
    hidden: int = 128
    lr: float = 3e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float = 1.0
    schedule: str = "cosine"
    forget_bias: float = 1.0
    max_loss: float = 100.0
    seed: int = 0
    val_size: int = 5000
    train_subset: int | None = None
    data_dir: str | None = None
    download: bool = False


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
        help="fetch missing files of --data-dir into the cache ($LSTMCORE_DATA)",
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
    return p


# ---- state -------------------------------------------------------------------------------------


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


def make_optimizer(cfg: Config, params: dict[str, Array]) -> optim.Optimizer:
    if cfg.optimizer == "sgd":
        return optim.SGD(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return optim.Adam(
        params, cfg.lr, weight_decay=cfg.weight_decay, decoupled=cfg.optimizer == "adamw"
    )


def lr_for(cfg: Config, step: int, total: int) -> float:
    return optim.lr_at(cfg.schedule, cfg.lr, step, total, step_size=max(total // 3, 1))


def save_state(
    path: Path,
    model: SequenceClassifier,
    opt: optim.Optimizer,
    cfg: Config,
    prog: Progress,
    rng: np.random.Generator,
    order: Array,
) -> None:
    for name, value in model.params.items():
        if not np.all(np.isfinite(value)):
            raise TrainingError(
                f"step {prog.step}: parameter {name} is not finite; not saving {path.name} "
                "(the previous checkpoints are kept)"
            )
    meta = {
        "config": asdict(cfg),
        "progress": asdict(prog),
        "rng": rng.bit_generator.state,
        "model": model.config,
    }
    checkpoint.save(path, model.params, opt.state_dict(), meta, {"epoch_order": order})


def restore_state(
    path: Path,
    model: SequenceClassifier,
    opt: optim.Optimizer,
    rng: np.random.Generator,
    train_size: int,
) -> tuple[Progress, Array]:
    """Loads last.npz into model, optimizer and rng; nothing changes unless all of it is valid."""
    params, opt_state, meta, other = checkpoint.load(path)
    try:
        prog = Progress(**meta["progress"])
        rng_state = meta["rng"]
        order = other["epoch_order"]
    except (KeyError, TypeError) as err:
        raise checkpoint.CheckpointError(f"{path}: incomplete metadata: {err}") from err
    if len(order) != train_size:
        raise checkpoint.CheckpointError(f"{path}: saved for another data set")
    trial = np.random.default_rng()
    try:
        trial.bit_generator.state = rng_state
    except (TypeError, ValueError, KeyError) as err:
        raise checkpoint.CheckpointError(f"{path}: bad RNG state: {err}") from err
    try:
        opt.check_state(opt_state)
    except ValueError as err:
        raise checkpoint.CheckpointError(f"{path}: {err}") from err
    checkpoint.assign_params(path, params, model.params)  # validates first
    opt.load_state_dict(opt_state)
    rng.bit_generator.state = rng_state
    return prog, order


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl, rewritten atomically from the history the checkpoint holds."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    _files.write_text(run_dir / "metrics.jsonl", text)


# ---- evaluation --------------------------------------------------------------------------------


def confusion_matrix(labels: Array, predicted: Array, classes: int) -> NDArray[np.int64]:
    m = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(m, (labels, predicted), 1)
    return m


def format_confusion(m: NDArray[np.int64]) -> str:
    width = max(5, len(str(m.max(initial=0))) + 1)
    head = "true\\pred" + "".join(f"{c:>{width}}" for c in range(m.shape[1]))
    rows = [f"{r:>9}" + "".join(f"{v:>{width}}" for v in m[r]) for r in range(m.shape[0])]
    return "\n".join([head, *rows])


def accuracy_line(correct: int, total: int) -> str:
    return f"test accuracy: {100.0 * correct / max(total, 1):.2f}% ({correct}/{total})"


# ---- the loop ----------------------------------------------------------------------------------


class CpuStepper:
    """One training step on the CPU core; the host model and optimizer are the state."""

    def __init__(
        self,
        model: SequenceClassifier,
        opt: optim.Optimizer,
        cfg: Config,
        images: Array,
        labels: Array,
    ) -> None:
        self.model, self.opt, self.cfg = model, opt, cfg
        self.images, self.labels = images, labels

    def step(self, idx: Array, lr: float) -> tuple[float, int, str | None]:
        self.opt.lr = lr
        # non-finite values are caught just below, by name: no numpy warnings
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            loss, correct = self.model.loss_and_grads(self.images[idx], self.labels[idx])
        grads = self.model.grads
        problem = divergence(loss, grads, self.cfg.max_loss)
        if problem is None:
            if self.cfg.clip > 0:
                optim.clip_grad_norm(grads, self.cfg.clip)
            self.opt.step(grads)
        return loss, correct, problem

    def sync(self) -> None:
        """Nothing to do: the host arrays are the state."""

    def predict(self, images: Array) -> NDArray[np.int64]:
        return self.model.predict(images)


class CudaStepper:
    """One training step on the GPU (lstmcore.cuda_train); sync() brings the device state to
    the host model and optimizer before they are evaluated or saved."""

    def __init__(
        self,
        model: SequenceClassifier,
        opt: optim.Optimizer,
        cfg: Config,
        images: Array,
        labels: Array,
        tf32: bool,
    ) -> None:
        from lstmcore.cuda_train import CudaSession

        self.model, self.opt, self.cfg = model, opt, cfg
        self.session = CudaSession(
            model, opt, images, labels, max_batch=cfg.batch_size, clip=cfg.clip, tf32=tf32
        )
        self.session.push(model, opt)

    def step(self, idx: Array, lr: float) -> tuple[float, int, str | None]:
        self.opt.lr = lr
        loss, correct, applied = self.session.step(idx, lr)
        # the device skips a non-finite update itself; name what was not finite
        if not applied and math.isfinite(loss):
            return loss, correct, "a gradient is not finite"
        return loss, correct, divergence(loss, {}, self.cfg.max_loss)

    def sync(self) -> None:
        self.session.pull(self.model, self.opt)

    def predict(self, images: Array) -> NDArray[np.int64]:
        """Validation on the device, with the device's parameters."""
        return self.session.predict(images)


def make_stepper(
    device: str,
    model: SequenceClassifier,
    opt: optim.Optimizer,
    cfg: Config,
    images: Array,
    labels: Array,
    tf32: bool,
) -> CpuStepper | CudaStepper:
    if device == "cuda":
        return CudaStepper(model, opt, cfg, images, labels, tf32)
    return CpuStepper(model, opt, cfg, images, labels)


class _Interrupt:
    """SIGINT sets a flag that the loop checks between steps, so a step is never cut in half."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.requested = True


def divergence(loss: float, grads: dict[str, Array], max_loss: float) -> str | None:
    """What shows the run has diverged (the first non-finite quantity, or a loss above
    max_loss), or None."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    for name, g in grads.items():
        if not np.all(np.isfinite(g)):
            return f"gradient of {name} is not finite"
    if loss > max_loss:
        return f"loss {loss:.4g} exceeds --max-loss {max_loss:g} (diverging)"
    return None


def train(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        try:
            saved = json.loads((run_dir / "config.json").read_text())
            cfg = Config(**saved)
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise checkpoint.CheckpointError(
                f"{run_dir}/config.json: cannot resume: {err}"
            ) from err
    else:
        cfg = Config(**{k: getattr(args, k) for k in asdict(Config()) if hasattr(args, k)})
        run_dir = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    quiet = bool(args.quiet)

    def say(text: str) -> None:
        if not quiet:
            from tqdm import tqdm

            tqdm.write(text)

    mnist = data.load_mnist(cfg.data_dir, download_missing=cfg.download)
    train_x, train_y, val_x, val_y = data.split_validation(
        mnist.train_images, mnist.train_labels, cfg.val_size
    )
    if cfg.train_subset is not None:
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total_steps = cfg.iters if cfg.iters is not None else cfg.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)

    cols = mnist.train_images.shape[2]
    model = SequenceClassifier(
        cols,
        cfg.hidden,
        mnist.num_classes,
        forget_bias=cfg.forget_bias,
        seed=cfg.seed,
        device=args.device,
    )
    opt = make_optimizer(cfg, model.params)
    rng = np.random.default_rng(cfg.seed + 1)
    prog = Progress()
    order = rng.permutation(len(train_x))
    if args.resume:
        prog, order = restore_state(run_dir / "last.npz", model, opt, rng, len(train_x))
        say(f"resumed {run_dir} at epoch {prog.epoch}, step {prog.step}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        _files.write_text(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    _files.remove_stale_temporaries(run_dir, RUN_FILES)
    stepper = make_stepper(args.device, model, opt, cfg, train_x, train_y, args.tf32)

    interrupt = _Interrupt()
    previous_handler = signal.signal(signal.SIGINT, interrupt)
    try:
        while prog.step < total_steps:
            started = time.perf_counter()
            batches = data.batches(len(train_x), cfg.batch_size, order)
            bar = None
            if not quiet:
                from tqdm import tqdm

                bar = tqdm(
                    total=len(batches),
                    initial=prog.epoch_pos,
                    leave=False,
                    desc=f"epoch {prog.epoch + 1}/{epochs}",
                    unit="batch",
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            for idx in batches[prog.epoch_pos :]:
                if prog.step >= total_steps:
                    break
                loss, correct, problem = stepper.step(idx, lr_for(cfg, prog.step, total_steps))
                if problem is not None:
                    raise TrainingError(
                        f"step {prog.step + 1}: {problem}; training stopped "
                        f"(last.npz and best.npz hold the last good state)"
                    )
                prog.step += 1
                prog.epoch_pos += 1
                prog.loss_sum += loss * len(idx)
                prog.correct += correct
                prog.seen += len(idx)
                if bar is not None:
                    elapsed = time.perf_counter() - started
                    bar.update(1)
                    bar.set_postfix(
                        loss=f"{prog.loss_sum / prog.seen:.4f}",
                        acc=f"{100 * prog.correct / prog.seen:.2f}%",
                        rate=f"{prog.seen / max(elapsed, 1e-9):.0f}/s",
                        refresh=False,
                    )
                if interrupt.requested:
                    prog.seconds += time.perf_counter() - started
                    if bar is not None:
                        bar.close()
                    stepper.sync()
                    save_state(run_dir / "last.npz", model, opt, cfg, prog, rng, order)
                    print(
                        f"interrupted at step {prog.step}: saved {run_dir / 'last.npz'}; "
                        f"continue with --resume {run_dir}",
                        file=sys.stderr,
                    )
                    return EXIT_INTERRUPTED
            if bar is not None:
                bar.close()
            prog.seconds += time.perf_counter() - started
            stepper.sync()  # the host model and optimizer now hold the device's state
            finish_epoch(run_dir, model, opt, cfg, prog, rng, val_x, val_y, say, stepper.predict)
            order = rng.permutation(len(train_x))
            prog.epoch_pos = 0
            save_state(run_dir / "last.npz", model, opt, cfg, prog, rng, order)
    finally:
        signal.signal(signal.SIGINT, previous_handler)

    report_test(run_dir, model, mnist, prog, quiet)
    return 0


def finish_epoch(
    run_dir: Path,
    model: SequenceClassifier,
    opt: optim.Optimizer,
    cfg: Config,
    prog: Progress,
    rng: np.random.Generator,
    val_x: Array,
    val_y: Array,
    say: Any,
    predict: Any,
) -> None:
    val_acc = float(np.mean(predict(val_x) == val_y)) if len(val_x) else float("nan")
    prog.epoch += 1
    epoch_seconds = prog.seconds - (prog.history[-1]["seconds"] if prog.history else 0.0)
    row = {
        "epoch": prog.epoch,
        "step": prog.step,
        "train_loss": prog.loss_sum / max(prog.seen, 1),
        "train_accuracy": prog.correct / max(prog.seen, 1),
        "val_accuracy": val_acc,
        "lr": opt.lr,
        "seconds": prog.seconds,
        "epoch_seconds": epoch_seconds,
        "samples_per_s": prog.seen / max(epoch_seconds, 1e-9),
    }
    prog.history.append(row)
    prog.loss_sum, prog.correct, prog.seen = 0.0, 0, 0
    say(
        f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  "
        f"train acc {100 * row['train_accuracy']:.2f}%  val acc {100 * val_acc:.2f}%  "
        f"{row['samples_per_s']:.0f} samples/s  {row['seconds']:.1f}s"
    )
    is_best = len(val_x) == 0 or val_acc > prog.best_val
    if is_best:
        prog.best_val = val_acc
    # best.npz first: if we die between the two writes, last.npz still points before this epoch
    if is_best:
        save_state(run_dir / "best.npz", model, opt, cfg, prog, rng, np.zeros(0, np.int64))
    write_metrics(run_dir, prog.history)


def report_test(
    run_dir: Path, model: SequenceClassifier, mnist: data.MnistData, prog: Progress, quiet: bool
) -> None:
    best = run_dir / "best.npz"
    if best.is_file():
        params, _, _, _ = checkpoint.load(best)
        checkpoint.assign_params(best, params, model.params)
    predicted = model.predict(mnist.test_images)
    correct = int((predicted == mnist.test_labels).sum())
    total = len(mnist.test_labels)
    write_metrics(
        run_dir,
        [
            *prog.history,
            {
                "test_accuracy": correct / max(total, 1),
                "test_correct": correct,
                "test_total": total,
                "model": "best.npz",
                "peak_rss_mb": peak_rss_mb(),
            },
        ],
    )
    plot_curves(run_dir, prog.history)
    if not quiet:
        print(format_confusion(confusion_matrix(mnist.test_labels, predicted, mnist.num_classes)))
    print(accuracy_line(correct, total))


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


def check_device(device: str) -> str | None:
    """None when training can run on ``device``, else the reason it cannot."""
    if device == "cpu":
        return None
    from lstmcore import cuda

    ok, reason = cuda.available()
    return None if ok else f"--device cuda: {reason}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_device(args.device)
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
