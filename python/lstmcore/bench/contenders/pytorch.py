"""PyTorch: torch.nn.LSTM + torch.nn.Linear + torch.optim.Adam, float32 and under bf16
autocast; pack_padded_sequence for varlen; one step with (h, c) carried for streaming. torch is
imported inside the builders only: the parent of isolated runs never loads it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from lstmcore.bench.cases import CLASSES, FORGET_BIAS, Case, case_lengths, seq_projection
from lstmcore.bench.contenders.common import Builder, Step

REQUIRES = ("torch",)


def _model(case: Case, threads: int, batch_first: bool) -> tuple[Any, Any, Any]:
    """(lstm, head, Adam over both) with torch's own initialisation, seeded."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(
        case.I,
        case.H,
        num_layers=case.layers,
        bidirectional=case.bidirectional,
        batch_first=batch_first,
    )
    with torch.no_grad():  # forget-gate bias 1, as lstmcore's models (see FORGET_BIAS)
        for name, value in lstm.named_parameters():
            if name.startswith("bias_ih"):
                value[case.H : 2 * case.H] += FORGET_BIAS
    head = torch.nn.Linear(case.directions * case.H, CLASSES)
    opt = torch.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-3)
    return lstm, head, opt


def _precision(bf16: bool) -> Callable[[], Any]:
    """What every step enters: a fresh torch.autocast("cpu", dtype=torch.bfloat16) for bf16,
    PyTorch's one-line mixed precision (float32 master weights); nothing otherwise."""
    import torch

    if bf16:
        return lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext


def features(h_n: Any, case: Case) -> Any:
    """The top layer's final states, both directions side by side (lstmcore's features)."""
    import torch

    return torch.cat(list(h_n[-case.directions :]), dim=1)


def train(case: Case, rng: np.random.Generator, threads: int, bf16: bool = False) -> Step:
    """torch.nn.LSTM + Linear + Adam; ``bf16``: the forward under autocast."""
    import torch

    lstm, head, opt = _model(case, threads, batch_first=True)
    x = torch.from_numpy(rng.random((case.B, case.T, case.I), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, case.B))
    loss_fn = torch.nn.CrossEntropyLoss()
    r = torch.from_numpy(seq_projection(case))
    precision = _precision(bf16)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with precision():
            out, (h_n, _) = lstm(x)
            if case.every_step:
                loss = (out.float() @ r).mean()
            else:
                loss = loss_fn(head(features(h_n, case)).float(), y)
        loss.backward()
        opt.step()

    return step


def infer(case: Case, rng: np.random.Generator, threads: int, bf16: bool = False) -> Step:
    import torch

    lstm, head, _ = _model(case, threads, batch_first=True)
    x = torch.from_numpy(rng.random((case.B, case.T, case.I), dtype=np.float32))
    precision = _precision(bf16)

    def step() -> None:
        with torch.inference_mode(), precision():
            _, (h_n, _) = lstm(x)
            head(h_n[0])

    return step


def varlen(case: Case, rng: np.random.Generator, threads: int, packed: bool) -> Step:
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm, head, opt = _model(case, threads, batch_first=False)  # time-major, as ops
    x = torch.from_numpy(rng.random((case.T, case.B, case.I), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, CLASSES, case.B))
    lengths = torch.from_numpy(case_lengths(case))  # int64 on the CPU, as torch wants
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if packed:
            out, (h_n, _) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
            pad_packed_sequence(out, total_length=case.T)  # y, as the padded contenders give
        else:
            _, (h_n, _) = lstm(x)
        loss_fn(head(h_n[0]), labels).backward()
        opt.step()

    return step


def stream(case: Case, rng: np.random.Generator, threads: int) -> Step:
    """torch.nn.LSTM on one time step with its state carried ((h, c) fed back)."""
    import torch

    lstm, _, _ = _model(case, threads, batch_first=False)
    x = torch.from_numpy(rng.random((1, case.B, case.I), dtype=np.float32))
    state = [torch.zeros(1, case.B, case.H), torch.zeros(1, case.B, case.H)]

    def step() -> None:
        with torch.inference_mode():
            _, (h, c) = lstm(x, (state[0], state[1]))
        state[0], state[1] = h, c

    return step


BUILDERS: dict[str, dict[str, Builder]] = {
    "train": {"torch": train, "torch-bf16": partial(train, bf16=True)},
    "infer": {"torch": infer, "torch-bf16": partial(infer, bf16=True)},
    "varlen": {
        "torch-packed": partial(varlen, packed=True),
        "torch-padded": partial(varlen, packed=False),
    },
    "stream": {"torch": stream},
}
