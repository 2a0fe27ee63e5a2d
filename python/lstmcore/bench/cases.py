"""What is measured: the model every contender builds, the cases (shapes and kinds), and the
useful work of one step of each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

CLASSES = 10
# forget-gate bias of every trained model (nn.SequenceClassifier's default): without it the
# gradients of a long sequence decay into denormal floats, whose slow arithmetic then decides
# the timing (measured at T=400, B=64: lstmcore's backward took 1483 ms instead of 116 ms)
FORGET_BIAS = 1.0


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "train", "infer", "varlen" or "stream"
    T: int
    B: int
    I: int  # noqa: E741
    H: int
    steps: int  # timed steps per contender and round (fewer for the slow cases)
    layers: int = 1
    bidirectional: bool = False
    every_step: bool = False  # train: the loss reads every step's output, not the last one

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


CASES = [
    Case("mnist-rows", "train", 28, 128, 28, 128, 40),
    Case("H256", "train", 28, 128, 28, 256, 30),
    Case("H512", "train", 28, 128, 28, 512, 20),
    Case("B16", "train", 28, 16, 28, 128, 60),
    Case("B512", "train", 28, 512, 28, 128, 20),
    Case("pixel-mnist", "train", 784, 128, 1, 128, 5),
    Case("infer-B1", "infer", 28, 1, 28, 128, 300),
    Case("infer-B16", "infer", 28, 16, 28, 128, 150),
    Case("infer-B128", "infer", 28, 128, 28, 128, 60),
    Case("varlen-rows", "varlen", 28, 128, 28, 128, 40),
    Case("varlen-long", "varlen", 400, 64, 28, 128, 8),
]
QUICK = [
    Case("tiny", "train", 5, 4, 3, 8, 3),
    Case("tiny-long", "train", 30, 2, 1, 4, 3),
    Case("tiny-infer-B1", "infer", 5, 1, 3, 8, 3),
    Case("tiny-infer", "infer", 5, 4, 3, 8, 3),
    Case("tiny-varlen", "varlen", 6, 5, 3, 8, 3),
    Case("tiny-stream", "stream", 1, 2, 3, 8, 3),
    Case("tiny-2l-bi-seq", "train", 5, 4, 3, 8, 3, layers=2, bidirectional=True, every_step=True),
]
STREAM_CASES = [
    Case("stream-B1", "stream", 1, 1, 28, 128, 2000),
    Case("stream-B16", "stream", 1, 16, 28, 128, 1000),
]
# the grid of training shapes people train (issue: float32 on every shape): T 28-200,
# B 16-256, I 8-128, H 64-512, 1-3 layers, one or two directions, loss at the last step or
# at every step
GRID = [
    Case("g-rows-bi", "train", 28, 128, 28, 128, 20, bidirectional=True),
    Case("g-2l-seq", "train", 50, 64, 32, 128, 15, layers=2, every_step=True),
    Case("g-T100-H256-seq", "train", 100, 32, 64, 256, 8, every_step=True),
    Case("g-T200-small", "train", 200, 16, 8, 64, 10),
    Case("g-wide-B256", "train", 28, 256, 128, 512, 5),
    Case("g-3l-bi-seq", "train", 50, 64, 64, 256, 5, layers=3, bidirectional=True, every_step=True),
    Case("g-small-B256", "train", 100, 256, 8, 64, 10, every_step=True),
    Case("g-2l-B16", "train", 28, 16, 8, 64, 40, layers=2),
]
ALL_CASES = {c.name: c for c in CASES + QUICK + STREAM_CASES + GRID}
CASE_GROUPS = {"grid": GRID, "stream": STREAM_CASES}


def case_lengths(case: Case) -> NDArray[np.int64]:
    """The varlen case's lengths, uniform in [1, T]: one fixed draw, the same in every process
    and for every contender."""
    rng = np.random.default_rng(1000 + case.T * 7 + case.B)
    return rng.integers(1, case.T + 1, case.B).astype(np.int64)


def seq_projection(case: Case) -> NDArray[np.float32]:
    """The fixed random (D*H,) vector a sequence-labelling case's loss projects every step's
    output on: loss = mean(y @ r), so dy = r / (T*B) everywhere (the same in every library)."""
    rng = np.random.default_rng(7)
    return rng.standard_normal(case.directions * case.H).astype(np.float32)


def flops(case: Case) -> float:
    """The useful floating-point work of one step of the case (see the package's help)."""
    four_h, dirs = 4 * case.H, case.directions
    if case.kind in ("infer", "stream"):
        inputs = [case.I] + [dirs * case.H] * (case.layers - 1)
        lstm = sum(2.0 * case.T * case.B * four_h * (i + case.H) * dirs for i in inputs)
        return lstm + (2.0 * case.B * dirs * case.H * CLASSES if case.kind == "infer" else 0.0)
    rows_x_steps = float(case_lengths(case).sum()) if case.kind == "varlen" else case.B * case.T
    recurrent = 0.0
    for layer in range(case.layers):
        # forward and dW_ih read the input (2I); dx (another I) only above the first layer
        i = case.I if layer == 0 else dirs * case.H
        reads = 2 * i + (i if layer > 0 else 0)
        recurrent += 2.0 * rows_x_steps * four_h * (reads + 3 * case.H) * dirs
    head = 0.0 if case.every_step else 6.0 * case.B * dirs * case.H * CLASSES
    return recurrent + head
