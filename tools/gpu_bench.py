"""GPU benchmark: lstmcore's device-resident trainer and predict against torch.nn.LSTM (cuDNN)
on the same GPU, like for like: lstmcore pedantic float32 against cuDNN with TF32 off, and
lstmcore --tf32 against cuDNN with TF32 on (each labelled). Run by tools/gpu_check.sh.

    python tools/gpu_bench.py --out DIR     table.md and bench.json into DIR, the table printed
    python tools/gpu_bench.py --sanitizer-case   a small run of every CUDA entry point, for
                                                 compute-sanitizer (no torch imported)

Training step: forward, backward, clip 1.0, Adam, each synchronised (lstmcore's compute()
returns once the loss is on the host; torch's step ends with loss.item()). Inference: host
images (B, T, I) float32 in, predicted labels on the host out, for both. Medians of timed
steps after warm-up; the model: LSTM(I, H) + Linear(H, 10).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import lstmcore
from lstmcore import cuda, ops, optim
from lstmcore.mnist.cuda_train import CudaSession
from lstmcore.nn import SequenceClassifier

# (label, T, B, I, H): the MNIST row model at two batch sizes and two widths, then pixel MNIST
SHAPES = [
    ("rows B16 H128", 28, 16, 28, 128),
    ("rows B128 H128", 28, 128, 28, 128),
    ("rows B16 H512", 28, 16, 28, 512),
    ("rows B128 H512", 28, 128, 28, 512),
    ("pixels B128 H128", 784, 128, 1, 128),
]
WARMUP, STEPS = 5, 30
CLASSES = 10

Step = Callable[[], object]


def median_ms(step: Step, steps: int = STEPS) -> float:
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def training_gflop(T: int, B: int, I: int, H: int) -> float:  # noqa: E741, N803
    """DESIGN.md's count: 2*B*T*4H*(2I+3H) + 6*B*H*C (dx not needed for layer 1)."""
    return (2 * B * T * 4 * H * (2 * I + 3 * H) + 6 * B * H * CLASSES) / 1e9


# ---- lstmcore -----------------------------------------------------------------------------


def lstmcore_steps(T: int, B: int, I: int, H: int, tf32: bool) -> tuple[Step, Step]:  # noqa: E741, N803
    rng = np.random.default_rng(0)
    images = rng.random((4 * B, T, I), dtype=np.float32)
    labels = rng.integers(0, CLASSES, 4 * B)
    model = SequenceClassifier(I, H, CLASSES, seed=0)
    session = CudaSession(
        model, optim.Adam(model.params, 1e-3), images, labels, max_batch=B, clip=1.0, tf32=tf32
    )
    idx = np.arange(B, dtype=np.int32)
    batch = images[:B].copy()

    def train() -> None:
        session.compute(idx)  # returns after the loss is back on the host
        session.apply(1e-3)  # queued on the stream: the next compute waits for it

    def infer() -> None:
        session.predict(batch)

    return train, infer


# ---- torch ----------------------------------------------------------------------------------


def set_torch_tf32(torch: Any, on: bool) -> str:
    """TF32 for cuDNN's RNNs and cuBLAS's matmuls; returns what torch reports back."""
    b = torch.backends
    if hasattr(b.cudnn, "rnn") and hasattr(b.cudnn.rnn, "fp32_precision"):
        mode = "tf32" if on else "ieee"
        b.cudnn.rnn.fp32_precision = mode
        b.cuda.matmul.fp32_precision = mode
        return f"cudnn.rnn.fp32_precision={b.cudnn.rnn.fp32_precision}"
    b.cudnn.allow_tf32 = on
    b.cuda.matmul.allow_tf32 = on
    return f"cudnn.allow_tf32={b.cudnn.allow_tf32}"


def torch_steps(torch: Any, T: int, B: int, I: int, H: int) -> tuple[Step, Step]:  # noqa: E741, N803
    dev = torch.device("cuda")
    lstm = torch.nn.LSTM(I, H, batch_first=True).to(dev)
    head = torch.nn.Linear(H, CLASSES).to(dev)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((B, T, I), dtype=np.float32)).to(dev)
    y = torch.randint(0, CLASSES, (B,), device=dev)
    host = rng.random((B, T, I), dtype=np.float32)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        _, (h_n, _) = lstm(x)
        loss = loss_fn(head(h_n[0]), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()  # the same synchronisation as lstmcore's step

    def infer() -> None:
        with torch.no_grad():
            _, (h_n, _) = lstm(torch.from_numpy(host).to(dev))
            head(h_n[0]).argmax(dim=1).cpu().numpy()

    return train, infer


COLUMNS = [
    ("train fp32: lstmcore", "lstmcore_train"),
    ("cuDNN", "cudnn_train"),
    ("train tf32: lstmcore", "lstmcore_tf32_train"),
    ("cuDNN", "cudnn_tf32_train"),
    ("infer fp32: lstmcore", "lstmcore_infer"),
    ("cuDNN", "cudnn_infer"),
    ("infer tf32: lstmcore", "lstmcore_tf32_infer"),
    ("cuDNN", "cudnn_tf32_infer"),
]


def render_table(header: str, rows: list[dict[str, Any]]) -> str:
    """The timings (ms) and the like-for-like ratios as markdown; a missing figure is nan."""
    lines = [header, "", "| shape | " + " | ".join(c for c, _ in COLUMNS) + " |"]
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for row in rows:
        cells = [f"{row.get(k, float('nan')):.3f}" for _, k in COLUMNS]
        lines.append(f"| {row['shape']} | " + " | ".join(cells) + " |")
    lines += ["", "lstmcore / cuDNN, like for like (below 1: lstmcore faster):", ""]
    lines.append("| shape | train fp32 | train tf32 | infer fp32 | infer tf32 |")
    lines.append("|---|---|---|---|---|")
    for row in rows:
        ratios = []
        for mode in ("train", "infer"):
            for ours, theirs in (("lstmcore", "cudnn"), ("lstmcore_tf32", "cudnn_tf32")):
                a, b = row.get(f"{ours}_{mode}"), row.get(f"{theirs}_{mode}")
                ratios.append(f"{a / b:.2f}" if a and b else "n/a")
        lines.append(f"| {row['shape']} | " + " | ".join(ratios) + " |")
    return "\n".join(lines) + "\n"


# ---- the run ------------------------------------------------------------------------------


def bench(out: Path) -> int:
    ok, name = lstmcore.cuda_available()
    if not ok:
        print(f"no GPU: {name}", file=sys.stderr)
        return 1
    try:
        import torch

        have_torch = bool(torch.cuda.is_available())
        torch_info = f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    except ImportError as err:
        torch, have_torch, torch_info = None, False, f"torch not importable: {err}"
    rows: list[dict[str, Any]] = []
    notes = []
    for label, T, B, I, H in SHAPES:  # noqa: E741, N806
        row: dict[str, Any] = {"shape": label, "T": T, "B": B, "I": I, "H": H}
        row["gflop"] = training_gflop(T, B, I, H)
        steps = STEPS if T <= 100 else 10
        for tf32 in (False, True):
            train, infer = lstmcore_steps(T, B, I, H, tf32)
            key = "lstmcore_tf32" if tf32 else "lstmcore"
            row[f"{key}_train"] = median_ms(train, steps)
            row[f"{key}_infer"] = median_ms(infer, steps)
        if have_torch:
            for tf32 in (False, True):
                notes.append(set_torch_tf32(torch, tf32))
                train, infer = torch_steps(torch, T, B, I, H)
                key = "cudnn_tf32" if tf32 else "cudnn"
                row[f"{key}_train"] = median_ms(train, steps)
                row[f"{key}_infer"] = median_ms(infer, steps)
            set_torch_tf32(torch, False)
        rows.append(row)
        print(f"measured {label}", file=sys.stderr, flush=True)

    header = (
        f"GPU: {name}; lstmcore {lstmcore.__version__} (cuBLAS from {cuda.cublas_location()}); "
        f"{torch_info}; python {platform.python_version()}. Median ms of {STEPS} steps "
        f"({10} for pixels) after {WARMUP} warm-up. train: forward, backward, clip, Adam; "
        "infer: host images in, labels out. fp32: lstmcore pedantic float32 (cuBLAS "
        "CUBLAS_PEDANTIC_MATH) / cuDNN TF32 off; tf32: lstmcore --tf32 / cuDNN TF32 on."
    )
    table = render_table(header, rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    info = {"gpu": name, "torch": torch_info, "tf32_settings": sorted(set(notes)), "rows": rows}
    (out / "bench.json").write_text(json.dumps(info, indent=1) + "\n")
    print(table)
    return 0


def sanitizer_case() -> int:
    """Every CUDA entry point once on small shapes (partial blocks, the two-level sum), for
    compute-sanitizer's memcheck and initcheck; asserts the results are finite."""
    module = cuda.require()
    rng = np.random.default_rng(0)
    total = 0.0
    for dtype in (np.float32, np.float64):
        ctx = None
        for T, B, I, H in ((5, 3, 4, 37), (70, 2, 3, 9)):  # noqa: E741, N806 - 4H*B > 256; 140 rows
            x = rng.standard_normal((T, B, I)).astype(dtype)
            w_ih = rng.uniform(-0.3, 0.3, (4 * H, I)).astype(dtype)
            w_hh = rng.uniform(-0.3, 0.3, (4 * H, H)).astype(dtype)
            bias = rng.uniform(-0.3, 0.3, 4 * H).astype(dtype)
            h0 = rng.standard_normal((B, H)).astype(dtype)
            for _ in range(2):  # the second call reuses the context's buffers
                y, h_n, _, ctx = ops.lstm_forward(
                    x, h0, None, w_ih, w_hh, bias, device="cuda", reuse=ctx
                )
                assert y is not None
                grads = ops.lstm_backward(ctx, np.ones_like(y), h_n, None, need_dx=True)
                total += sum(float(np.abs(g).sum()) for g in grads if g is not None)
            ctx = None
    for optimizer in ("adam", "sgd"):
        images = rng.random((40, 6, 5), dtype=np.float32)
        labels = rng.integers(0, 10, 40)
        model = SequenceClassifier(5, 20, 10, seed=1)
        opt: optim.Optimizer = (
            optim.Adam(model.params, 1e-3)
            if optimizer == "adam"
            else optim.SGD(model.params, 0.05, momentum=0.9)
        )
        session = CudaSession(model, opt, images, labels, max_batch=16, clip=0.5)
        session.push(model, opt)
        for start in (0, 16, 32):  # the last batch short
            loss, _, norm = session.compute(np.arange(start, min(start + 16, 40)))
            session.apply(1e-3)
            total += loss + norm
        total += float(session.predict(images).sum())
        total += sum(float(np.abs(g).sum()) for g in session.grads().values())
        session.pull(model, opt)
    if not np.isfinite(total):
        raise SystemExit("non-finite result")
    print(f"sanitizer case done on {module.device_name(0)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-bench"))
    parser.add_argument("--sanitizer-case", action="store_true")
    args = parser.parse_args()
    return sanitizer_case() if args.sanitizer_case else bench(args.out)


if __name__ == "__main__":
    sys.exit(main())
