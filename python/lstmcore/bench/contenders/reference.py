"""lstmcore.reference, the readable NumPy specification, in float64 (slow): the one-layer
classifier only."""

from __future__ import annotations

import numpy as np

from lstmcore import optim
from lstmcore import reference as ref
from lstmcore.bench.cases import CLASSES, Case
from lstmcore.bench.contenders.common import Builder, Step, single_layer_classifier
from lstmcore.nn import Linear, SequenceClassifier, softmax_cross_entropy

REQUIRES: tuple[str, ...] = ()


def train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    single_layer_classifier(case, "reference")
    model = SequenceClassifier(case.I, case.H, CLASSES, seed=0, dtype=np.float64)
    head: Linear = model.head
    opt = optim.Adam(model.params, 1e-3)
    x = rng.random((case.T, case.B, case.I))
    y = rng.integers(0, CLASSES, case.B)
    p = model.lstm.params

    def step() -> None:
        _, h_n, _, ctx = ref.stack_forward(x, None, None, p)
        _, dlogits = softmax_cross_entropy(head.forward(h_n[0]), y)
        dh = head.backward(dlogits)
        _, _, _, lstm_grads = ref.stack_backward(ctx, None, dh[None], None)
        grads = {
            **{f"lstm.{k}": v for k, v in lstm_grads.items()},
            **{f"head.{k}": v for k, v in head.grads.items()},
        }
        opt.step(grads)

    return step


def infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    model = SequenceClassifier(case.I, case.H, CLASSES, seed=0, dtype=np.float64)
    x = rng.random((case.T, case.B, case.I))
    p = model.lstm.params

    def step() -> None:
        _, h_n, _, _ = ref.stack_forward(x, None, None, p)
        model.head.forward(h_n[0])

    return step


BUILDERS: dict[str, dict[str, Builder]] = {
    "train": {"reference": train},
    "infer": {"reference": infer},
}
