"""lstmcore itself: nn.SequenceClassifier and optim.Adam (float32 and bf16), nn.LSTM for the
sequence-labelling and streaming cases, ops directly for varlen."""

from __future__ import annotations

from functools import partial

import numpy as np

from lstmcore import nn, ops, optim
from lstmcore.bench.cases import CLASSES, FORGET_BIAS, Case, case_lengths, seq_projection
from lstmcore.bench.contenders.common import Builder, Step
from lstmcore.nn import Linear, SequenceClassifier, softmax_cross_entropy

REQUIRES: tuple[str, ...] = ()  # the modules it needs beyond lstmcore


def train(case: Case, rng: np.random.Generator, threads: int, precision: str | None = None) -> Step:
    if case.every_step:
        return _seq_train(case, rng, precision)
    model = SequenceClassifier(
        case.I,
        case.H,
        CLASSES,
        num_layers=case.layers,
        bidirectional=case.bidirectional,
        seed=0,
        precision=precision,
    )
    opt = optim.Adam(model.params, 1e-3)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)
    y = rng.integers(0, CLASSES, case.B)

    def step() -> None:
        model.loss_and_grads(x, y)
        opt.step(model.grads)

    return step


def _seq_train(case: Case, rng: np.random.Generator, precision: str | None) -> Step:
    lstm = nn.LSTM(
        case.I,
        case.H,
        case.layers,
        case.bidirectional,
        batch_first=True,
        rng=np.random.default_rng(0),
        forget_bias=FORGET_BIAS,
        precision=precision,
    )
    opt = optim.Adam(lstm.params, 1e-3)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)
    dy = np.broadcast_to(
        seq_projection(case) / (case.T * case.B), (case.B, case.T, len(seq_projection(case)))
    ).astype(np.float32)

    def step() -> None:
        lstm.forward(x)
        lstm.backward(dy, need_dx=False)
        opt.step(lstm.grads)

    return step


def infer(case: Case, rng: np.random.Generator, threads: int, precision: str | None = None) -> Step:
    model = SequenceClassifier(case.I, case.H, CLASSES, seed=0, precision=precision)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)

    def step() -> None:
        model.logits(x)

    return step


def varlen(case: Case, rng: np.random.Generator, threads: int, honour_lengths: bool) -> Step:
    """Through ops directly (nn.LSTM's parameter names are changing; ops' are fixed)."""
    bound = 1.0 / np.sqrt(case.H)
    p = {
        "w_ih": rng.uniform(-bound, bound, (4 * case.H, case.I)).astype(np.float32),
        "w_hh": rng.uniform(-bound, bound, (4 * case.H, case.H)).astype(np.float32),
        "bias": rng.uniform(-bound, bound, 4 * case.H).astype(np.float32),
    }
    p["bias"][case.H : 2 * case.H] += FORGET_BIAS
    head = Linear(case.H, CLASSES, rng=rng)
    opt = optim.Adam({**p, **{f"head.{k}": v for k, v in head.params.items()}}, 1e-3)
    x = rng.random((case.T, case.B, case.I), dtype=np.float32)
    labels = rng.integers(0, CLASSES, case.B)
    lengths = case_lengths(case) if honour_lengths else None
    held: list[ops.LstmContext] = []  # the last context, its buffers reused by the next step

    def step() -> None:
        reuse = held.pop() if held else None
        _, h_n, _, ctx = ops.lstm_forward(
            x, None, None, p["w_ih"], p["w_hh"], p["bias"], reuse=reuse, lengths=lengths
        )
        held.append(ctx)
        _, dlogits = softmax_cross_entropy(head.forward(h_n), labels)
        dh_n = head.backward(dlogits)
        _, _, _, dw_ih, dw_hh, dbias = ops.lstm_backward(ctx, None, dh_n, None, need_dx=False)
        grads = {"w_ih": dw_ih, "w_hh": dw_hh, "bias": dbias}
        opt.step({**grads, **{f"head.{k}": v for k, v in head.grads.items()}})

    return step


def stream(case: Case, rng: np.random.Generator, threads: int) -> Step:
    lstm = nn.LSTM(case.I, case.H, rng=np.random.default_rng(0), forget_bias=FORGET_BIAS)
    state = lstm.stream(case.B)
    x = rng.random((case.B, case.I), dtype=np.float32)

    def step() -> None:
        state.step(x)

    return step


# kind -> {contender: builder}
BUILDERS: dict[str, dict[str, Builder]] = {
    "train": {"lstmcore": train, "lstmcore-bf16": partial(train, precision="bf16")},
    "infer": {"lstmcore": infer, "lstmcore-bf16": partial(infer, precision="bf16")},
    "varlen": {
        "lstmcore-lengths": partial(varlen, honour_lengths=True),
        "lstmcore-padded": partial(varlen, honour_lengths=False),
    },
    "stream": {"lstmcore": stream},
}
