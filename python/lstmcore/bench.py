"""``python -m lstmcore.bench``: lstmcore against its peers, side by side in one run.

Contenders (each skipped with a note when not importable): lstmcore, lstmcore.reference
(NumPy), PyTorch's torch.nn.LSTM and Keras 3 on JAX. The model is the same everywhere: one
LSTM layer, a Linear layer to 10 classes, softmax cross-entropy; a *training step* is forward,
backward and an Adam update, *inference* is the forward pass alone. Steps are interleaved in
short blocks (A A A B B B A A A ..., each block after one untimed step) so that machine noise
hits every contender alike while no contender pays for another's still-spinning thread pool;
warm-up steps are excluded; each row reports the median and interquartile range, samples/s,
achieved GFLOP/s and the ratio against lstmcore.

FLOP counts (multiply-adds count 2; C classes): training
``2*B*T*4H*(2I + 3H) + 6*B*H*C`` (input, recurrent and both weight-gradient GEMMs, dh GEMM; dx
is not needed for the first layer), inference ``2*B*T*4H*(I + H) + 2*B*H*C``. The floor is
FLOPs over the sgemm ceiling measured through lstmcore's own BLAS (2048^3).

Peers are never dependencies: ``pip install torch==2.13.0`` brings PyTorch (CPU build).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import lstmcore
from lstmcore import optim
from lstmcore import reference as ref
from lstmcore.nn import Linear, SequenceClassifier, softmax_cross_entropy

CLASSES = 10


@dataclass(frozen=True)
class Shape:
    name: str
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    steps: int  # timed steps per contender (fewer for the slow shapes)


SHAPES = [
    Shape("mnist-rows", 28, 128, 28, 128, 40),
    Shape("H256", 28, 128, 28, 256, 30),
    Shape("H512", 28, 128, 28, 512, 30),
    Shape("B16", 28, 16, 28, 128, 60),
    Shape("B512", 28, 512, 28, 128, 30),
    Shape("pixel-mnist", 784, 128, 1, 128, 5),
]
QUICK = [Shape("tiny", 5, 4, 3, 8, 3), Shape("tiny-long", 30, 2, 1, 4, 3)]


def train_flops(s: Shape) -> float:
    return 2.0 * s.B * s.T * 4 * s.H * (2 * s.I + 3 * s.H) + 6.0 * s.B * s.H * CLASSES


def infer_flops(s: Shape) -> float:
    return 2.0 * s.B * s.T * 4 * s.H * (s.I + s.H) + 2.0 * s.B * s.H * CLASSES


Step = Callable[[], None]


def lstmcore_steps(s: Shape, rng: np.random.Generator) -> tuple[Step, Step]:
    model = SequenceClassifier(s.I, s.H, CLASSES, seed=0)
    opt = optim.Adam(model.params, 1e-3)
    x = rng.random((s.B, s.T, s.I), dtype=np.float32)
    y = rng.integers(0, CLASSES, s.B)

    def train() -> None:
        model.loss_and_grads(x, y)
        opt.step(model.grads)

    def infer() -> None:
        model.logits(x)

    return train, infer


def reference_steps(s: Shape, rng: np.random.Generator) -> tuple[Step, Step]:
    lstm = SequenceClassifier(s.I, s.H, CLASSES, seed=0, dtype=np.float64)
    head: Linear = lstm.head
    opt = optim.Adam(lstm.params, 1e-3)
    x = rng.random((s.T, s.B, s.I))
    y = rng.integers(0, CLASSES, s.B)
    p = lstm.lstm.params

    def train() -> None:
        _, h_n, _, ctx = ref.stack_forward(x, None, None, p)
        _, dlogits = softmax_cross_entropy(head.forward(h_n[0]), y)
        dh = head.backward(dlogits)
        _, _, _, lstm_grads = ref.stack_backward(ctx, None, dh[None], None)
        grads = {
            **{f"lstm.{k}": v for k, v in lstm_grads.items()},
            **{f"head.{k}": v for k, v in head.grads.items()},
        }
        opt.step(grads)

    def infer() -> None:
        _, h_n, _, _ = ref.stack_forward(x, None, None, p)
        head.forward(h_n[0])

    return train, infer


def torch_steps(s: Shape, rng: np.random.Generator) -> tuple[Step, Step]:
    import torch

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(s.I, s.H, batch_first=True)
    head = torch.nn.Linear(s.H, CLASSES)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-3)
    x = torch.from_numpy(rng.random((s.B, s.T, s.I), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, s.B))
    loss_fn = torch.nn.CrossEntropyLoss()

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        _, (h_n, _) = lstm(x)
        loss_fn(head(h_n[0]), y).backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            _, (h_n, _) = lstm(x)
            head(h_n[0])

    return train, infer


def keras_steps(s: Shape, rng: np.random.Generator) -> tuple[Step, Step]:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((s.T, s.I)), keras.layers.LSTM(s.H), keras.layers.Dense(CLASSES)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        jit_compile=True,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = rng.random((s.B, s.T, s.I), dtype=np.float32)
    y = rng.integers(0, CLASSES, s.B)

    def train() -> None:
        model.train_on_batch(x, y)

    def infer() -> None:
        model.predict_on_batch(x)

    return train, infer


def contenders(threads: int) -> tuple[dict[str, Callable[..., tuple[Step, Step]]], list[str]]:
    found: dict[str, Callable[..., tuple[Step, Step]]] = {
        "lstmcore": lstmcore_steps,
        "numpy-reference": reference_steps,
    }
    notes: list[str] = []
    try:
        import torch

        torch.set_num_threads(threads)
        found[f"torch-{torch.__version__}"] = torch_steps
    except ImportError:
        notes.append("PyTorch not importable: skipped (pip install torch==2.13.0)")
    # XLA sizes its thread pool once per process, from all cores: Keras runs only in the
    # all-cores pass, where its thread count matches the others'
    if threads == len(os.sched_getaffinity(0)):
        os.environ.setdefault("KERAS_BACKEND", "jax")
        try:
            import keras

            if keras.backend.backend() == "jax":
                found[f"keras-{keras.__version__}-jax"] = keras_steps
            else:
                notes.append(f"Keras uses the {keras.backend.backend()} backend: skipped")
        except ImportError:
            notes.append("Keras 3 / JAX not importable: skipped")
    else:
        notes.append(f"Keras/JAX runs only with all cores (XLA's pool), not with {threads}")
    return found, notes


def timed(fn: Step) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(
    steps: dict[str, Step], repeats: int, warmup: int, block: int
) -> dict[str, list[float]]:
    """Interleaves the contenders in blocks (A x block, B x block, A x block, ...) until each has
    ``repeats`` timed steps. The first step of every block is run but not timed: other
    libraries' thread pools (OpenBLAS, OpenMP, XLA) keep spinning for a while after their own
    step and would otherwise be charged to whoever runs next."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    while any(len(t) < repeats for t in times.values()):
        for name, fn in steps.items():
            fn()  # absorbs the previous contender's spinning threads
            for _ in range(min(block, repeats - len(times[name]))):
                times[name].append(timed(fn))
    return times


def summarise(
    shape: Shape, kind: str, threads: int, times: dict[str, list[float]], ceiling: float
) -> list[dict[str, Any]]:
    flops = train_flops(shape) if kind == "train" else infer_flops(shape)
    base = float(np.median(times["lstmcore"]))
    rows = []
    for name, t in times.items():
        med = float(np.median(t))
        q1, q3 = (float(v) for v in np.percentile(t, [25, 75]))
        rows.append(
            {
                "shape": shape.name,
                "T": shape.T,
                "B": shape.B,
                "I": shape.I,
                "H": shape.H,
                "kind": kind,
                "threads": threads,
                "contender": name,
                "steps": len(t),
                "median_ms": 1e3 * med,
                "iqr_ms": 1e3 * (q3 - q1),
                "samples_per_s": shape.B / med,
                "gflops": flops / med / 1e9,
                "time_vs_lstmcore": med / base,
                "fraction_of_floor": (flops / ceiling) / med if name == "lstmcore" else None,
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], ceilings: dict[int, float]) -> None:
    for threads, c in ceilings.items():
        print(
            f"sgemm ceiling (2048^3, lstmcore's BLAS, {threads} thread(s)): {c / 1e9:.1f} GFLOP/s"
        )
    head = (
        f"{'shape':<12}{'kind':<7}{'thr':>4} {'contender':<22}{'median ms':>10}"
        f"{'IQR ms':>8}{'samples/s':>11}{'GFLOP/s':>9}{'x lstmcore':>11}{'of floor':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        floor = f"{100 * r['fraction_of_floor']:.0f}%" if r["fraction_of_floor"] else ""
        print(
            f"{r['shape']:<12}{r['kind']:<7}{r['threads']:>4} {r['contender']:<22}"
            f"{r['median_ms']:>10.2f}{r['iqr_ms']:>8.2f}{r['samples_per_s']:>11.0f}"
            f"{r['gflops']:>9.1f}{r['time_vs_lstmcore']:>11.2f}{floor:>9}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=sorted({1, len(os.sched_getaffinity(0))}),
        help="thread counts to run (default: 1 and all cores)",
    )
    parser.add_argument(
        "--shapes", nargs="+", default=None, help=f"subset of {[s.name for s in SHAPES]}"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed steps per contender (default: per shape, >= 30 for all but pixel-mnist)",
    )
    parser.add_argument(
        "--block",
        type=int,
        default=3,
        help="timed steps per contender before switching to the next (after one untimed step)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the NumPy reference (slow at large shapes)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--json", metavar="FILE", help="write every measurement here")
    args = parser.parse_args(argv)
    if any(t < 1 for t in args.threads):
        parser.error("--threads: counts must be >= 1")
    shapes = QUICK if args.quick else SHAPES
    if args.shapes:
        unknown = set(args.shapes) - {s.name for s in shapes}
        if unknown:
            parser.error(f"--shapes: unknown {sorted(unknown)}")
        shapes = [s for s in shapes if s.name in args.shapes]
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    ceilings: dict[int, float] = {}
    notes: list[str] = []
    for threads in args.threads:
        lstmcore.set_num_threads(threads)
        from lstmcore._native import core

        ceilings[threads] = 2.0 * 2048**3 / core.time_sgemm(2048, 5)
        found, found_notes = contenders(threads)
        notes.extend(n for n in found_notes if n not in notes)
        if args.no_reference:
            found.pop("numpy-reference")
        for shape in shapes:
            repeats = args.repeats or shape.steps
            built = {name: make(shape, rng) for name, make in found.items()}
            for k, kind in enumerate(("train", "infer")):
                steps = {name: pair[k] for name, pair in built.items()}
                times = measure(steps, repeats, warmup=2, block=args.block)
                rows.extend(summarise(shape, kind, threads, times, ceilings[threads]))
            print(f"  measured {shape.name} with {threads} thread(s)", file=sys.stderr)
    for note in notes:
        print(f"note: {note}")
    print_table(rows, ceilings)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "ceilings_flops": ceilings,
                    "notes": notes,
                    "rows": rows,
                    "blas_core": core.blas_core_name(),
                    "openblas_env": {
                        k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                    },
                },
                out,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
