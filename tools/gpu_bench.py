"""GPU training-step benchmark: lstmcore's device-resident trainer against torch.nn.LSTM
(cuDNN) on the same GPU, when torch with CUDA is importable. Prints a table last.

Run by tools/gpu_check.sh; medians of timed steps after warm-up, each step synchronised.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np

import lstmcore
from lstmcore import optim
from lstmcore.cuda_train import CudaSession
from lstmcore.nn import SequenceClassifier

SHAPES = [
    ("mnist-rows B128", 28, 128, 28, 128),
    ("mnist-rows B16", 28, 16, 28, 128),
    ("mnist-rows B512", 28, 512, 28, 128),
    ("pixel-mnist B128", 784, 128, 1, 128),
]
WARMUP, STEPS = 5, 30


Step = Callable[[], object]


def median_ms(step: Step) -> float:
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(STEPS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def lstmcore_step(T: int, B: int, I: int, H: int) -> Step:  # noqa: E741, N803
    rng = np.random.default_rng(0)
    images = rng.random((4 * B, T, I), dtype=np.float32)
    labels = rng.integers(0, 10, 4 * B)
    model = SequenceClassifier(I, H, 10, seed=0)
    session = CudaSession(
        model, optim.Adam(model.params, 1e-3), images, labels, max_batch=B, clip=1.0
    )
    idx = np.arange(B, dtype=np.int32)

    def step() -> None:
        session.compute(idx)  # returns after the loss is back on the host
        session.apply(1e-3)  # queued on the stream: the next compute waits for it

    return step


def torch_step(T: int, B: int, I: int, H: int) -> Step | None:  # noqa: E741, N803
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dev = torch.device("cuda")
    lstm = torch.nn.LSTM(I, H, batch_first=True).to(dev)
    head = torch.nn.Linear(H, 10).to(dev)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.rand(B, T, I, device=dev)
    y = torch.randint(0, 10, (B,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _, (h_n, _) = lstm(x)
        loss = loss_fn(head(h_n[0]), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()  # the same synchronisation as lstmcore's step

    return step


def main() -> int:
    ok, name = lstmcore.cuda_available()
    if not ok:
        print(f"no GPU: {name}", file=sys.stderr)
        return 1
    rows = []
    for label, T, B, I, H in SHAPES:  # noqa: E741, N806
        ours = median_ms(lstmcore_step(T, B, I, H))
        theirs_step = torch_step(T, B, I, H)
        theirs = median_ms(theirs_step) if theirs_step is not None else float("nan")
        rows.append((label, ours, theirs))
        print(f"measured {label}", file=sys.stderr, flush=True)
    print(f"GPU: {name}; training step (forward, backward, clip, Adam), median of {STEPS}")
    print(f"{'shape':<18}{'lstmcore ms':>12}{'torch/cuDNN ms':>16}{'ratio':>8}")
    for label, ours, theirs in rows:
        print(f"{label:<18}{ours:>12.3f}{theirs:>16.3f}{ours / theirs:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
