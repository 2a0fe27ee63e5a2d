"""``python -m lstmcore.bench``: lstmcore against its peers on the same model.

The model is the same everywhere: an LSTM (one layer unless the case says more; forget-gate
bias 1, which keeps long sequences' gradients out of slow denormal floats), a Linear layer to
10 classes, softmax cross-entropy, float32 (the NumPy reference: float64). Each case is one of
these kinds:
  train   a training step: forward, backward and an Adam update. The grid's cases (--cases
          grid) vary T, B, I, H, the layers (1-3) and the directions; "seq" cases put the loss
          on every step's output (sequence labelling: a fixed random projection of y), the
          others on the last step's (classification)
  infer   inference: the forward pass to the logits
  stream  one time step of a unidirectional LSTM with its state carried (lstmcore's
          LSTM.stream, onnxruntime's LSTM op on a T=1 graph with the state fed back in, torch's
          LSTM on one step with (h, c)): the per-step latency of real-time use
  varlen  a training step over sequences whose lengths are uniform in [1, T] (one fixed draw
          per case): lstmcore given the lengths (lstmcore-lengths) and over the padded batch
          ignoring them (lstmcore-padded); PyTorch through pack_padded_sequence(
          enforce_sorted=False) -> LSTM -> pad_packed_sequence (torch-packed) and over the padded
          batch (torch-padded). Every contender computes the whole output sequence; the loss
          reads the final states (each sequence's own last step where lengths are honoured).

Contenders (--contenders; each skipped with a note when its library is not importable, and
never a dependency of lstmcore):
  lstmcore     this package (nn.SequenceClassifier and optim.Adam; ops for varlen)
  reference    lstmcore.reference, the readable NumPy specification (float64, so its "of
               floor" is against the float32 floor; slow)
  torch        torch.nn.LSTM + torch.nn.Linear + torch.optim.Adam (pip install torch)
  onnxruntime  inference only: ONNX's own LSTM operator, built with the onnx package from the
               same weights (gates reordered to ONNX's i, o, f, c) plus a Gemm head;
               intra_op_num_threads = the row's threads, inter_op 1. At start-up its logits are
               compared with lstmcore's on the same weights and input: a max abs difference
               over 1e-4 refuses it with a note (pip install onnx onnxruntime)
  keras        Keras 3 on JAX, only at all cores (XLA sizes its pool once per process)

Precision (--precision fp32, bf16 or both): bf16 adds lstmcore-bf16 (nn.SequenceClassifier
with precision="bf16": bf16-rounded GEMM operands, float32 parameters, states and Adam) and
torch-bf16 (the same torch model under torch.autocast("cpu", dtype=torch.bfloat16), PyTorch's
one-line mixed precision, its fastest honest bf16 mode on the CPU), for training and inference.
A bf16 row's "x lstmcore" is against lstmcore-bf16. lstmcore's bf16 path here is emulated on
its float32 kernels (no AMX or AVX512-BF16 kernels in this build): its floor is the sgemm rate.

Modes (--mode):
  isolated     (the default) each contender library runs alone in its own process (this
               module started as a worker, its results as JSON on stdout), the libraries
               alternated over --rounds rounds; a row gives the median of the rounds' medians
               and their range. The default because thread pools (OpenMP in PyTorch,
               onnxruntime's, OpenBLAS's) keep spinning after a call and tax whatever runs next
               in the same process: on a 2-core Xeon lstmcore's 2-thread inference at B=128 went
               from 4.4 to 8.0 ms when it shared a process with PyTorch and onnxruntime.
  interleaved  one process; the contenders' steps interleaved in blocks (A x block, B x block,
               A x block, ...; each block after one untimed step that absorbs the previous
               library's spinning threads); the median and interquartile range over steps.
               Quicker, and every contender sees the same moment's machine noise.
Warm-up steps are excluded in both modes.

FLOPs (a multiply-add counts 2; C = 10 classes): training 2*B*T*4H*(2I + 3H) + 6*B*H*C (input,
recurrent and both weight-gradient GEMMs, the dh GEMM; dx is not needed for the first layer),
inference 2*T*B*4H*(I + H) + 2*B*H*C; varlen rows count the real work only (B*T replaced by
the sum of the lengths), so a padded contender shows the cost of its padding. The floor is
FLOPs over the sgemm rate of lstmcore's own BLAS (a 2048^3 sgemm through lstmcore's time_sgemm
at the row's thread count, the best of three medians of five); "of floor" = floor / median
time, for every contender.

The header names the CPU, the cores, lstmcore's ISA path and BLAS core, the libraries'
versions and whether OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE were set (they change the BLAS
kernels; this benchmark never changes them: unset them yourself with env -u to compare).

Reproduce the README's table:  python -m lstmcore.bench --json bench.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from importlib.util import find_spec
from typing import Any

import numpy as np
from numpy.typing import NDArray

import lstmcore
from lstmcore import nn, ops, optim
from lstmcore import reference as ref
from lstmcore._native import core
from lstmcore.nn import Linear, SequenceClassifier, softmax_cross_entropy

CLASSES = 10
# forget-gate bias of every trained model (nn.SequenceClassifier's default): without it the
# gradients of a long sequence decay into denormal floats, whose slow arithmetic then decides
# the timing (measured at T=400, B=64: lstmcore's backward took 1483 ms instead of 116 ms)
FORGET_BIAS = 1.0
ONNX_TOLERANCE = 1e-4  # max abs difference of float32 logits, onnxruntime vs lstmcore
MAX_THREADS = 1024  # a typo such as --threads 20000 must not start 20000 threads
FAMILIES = ("lstmcore", "reference", "torch", "onnxruntime", "keras")
WORKER_TIMEOUT_S = 3600.0

Array = NDArray[Any]
Step = Callable[[], None]


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


class RefusedError(Exception):
    """A contender that cannot run a case faithfully (its numbers disagree, wrong backend)."""


# ---- work counts -------------------------------------------------------------------------


def case_lengths(case: Case) -> NDArray[np.int64]:
    """The varlen case's lengths, uniform in [1, T]: one fixed draw, the same in every process
    and for every contender."""
    rng = np.random.default_rng(1000 + case.T * 7 + case.B)
    return rng.integers(1, case.T + 1, case.B).astype(np.int64)


def flops(case: Case) -> float:
    """The useful floating-point work of one step of the case (see the module's help)."""
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


# ---- contenders ----------------------------------------------------------------------------


def _lstmcore_train(case: Case, rng: np.random.Generator, precision: str | None) -> Step:
    if case.every_step:
        return _lstmcore_seq_train(case, rng, precision)
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

    def train() -> None:
        model.loss_and_grads(x, y)
        opt.step(model.grads)

    return train


def seq_projection(case: Case) -> Array:
    """The fixed random (D*H,) vector a sequence-labelling case's loss projects every step's
    output on: loss = mean(y @ r), so dy = r / (T*B) everywhere (the same in every library)."""
    rng = np.random.default_rng(7)
    return rng.standard_normal(case.directions * case.H).astype(np.float32)


def _lstmcore_seq_train(case: Case, rng: np.random.Generator, precision: str | None) -> Step:
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

    def train() -> None:
        lstm.forward(x)
        lstm.backward(dy, need_dx=False)
        opt.step(lstm.grads)

    return train


def lstmcore_train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _lstmcore_train(case, rng, None)


def lstmcore_bf16_train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _lstmcore_train(case, rng, "bf16")


def lstmcore_bf16_infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    model = SequenceClassifier(case.I, case.H, CLASSES, seed=0, precision="bf16")
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)

    def infer() -> None:
        model.logits(x)

    return infer


def lstmcore_infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    model = SequenceClassifier(case.I, case.H, CLASSES, seed=0)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)

    def infer() -> None:
        model.logits(x)

    return infer


def _lstmcore_varlen(case: Case, rng: np.random.Generator, honour_lengths: bool) -> Step:
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

    def train() -> None:
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

    return train


def lstmcore_varlen_lengths(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _lstmcore_varlen(case, rng, honour_lengths=True)


def lstmcore_varlen_padded(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _lstmcore_varlen(case, rng, honour_lengths=False)


def single_layer_classifier(case: Case, contender: str) -> None:
    """RefusedError unless the case is the one-layer, one-direction classifier that the
    contender's builder implements."""
    if case.layers != 1 or case.bidirectional or case.every_step:
        raise RefusedError(
            f"{contender} runs the one-layer classification cases only, not {case.name}"
        )


def reference_train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    single_layer_classifier(case, "reference")
    model = SequenceClassifier(case.I, case.H, CLASSES, seed=0, dtype=np.float64)
    head: Linear = model.head
    opt = optim.Adam(model.params, 1e-3)
    x = rng.random((case.T, case.B, case.I))
    y = rng.integers(0, CLASSES, case.B)
    p = model.lstm.params

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

    return train


def reference_infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    model = SequenceClassifier(case.I, case.H, CLASSES, seed=0, dtype=np.float64)
    x = rng.random((case.T, case.B, case.I))
    p = model.lstm.params

    def infer() -> None:
        _, h_n, _, _ = ref.stack_forward(x, None, None, p)
        model.head.forward(h_n[0])

    return infer


def _torch_model(case: Case, threads: int, batch_first: bool) -> tuple[Any, Any, Any]:
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


def _torch_train(case: Case, rng: np.random.Generator, threads: int, bf16: bool) -> Step:
    """torch.nn.LSTM + Linear + Adam; ``bf16``: the forward under torch.autocast("cpu",
    dtype=torch.bfloat16), PyTorch's one-line mixed precision (float32 master weights)."""
    import contextlib

    import torch

    lstm, head, opt = _torch_model(case, threads, batch_first=True)
    x = torch.from_numpy(rng.random((case.B, case.T, case.I), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, case.B))
    loss_fn = torch.nn.CrossEntropyLoss()
    r = torch.from_numpy(seq_projection(case))

    def precision() -> Any:
        if bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with precision():
            out, (h_n, _) = lstm(x)
            if case.every_step:
                loss = (out.float() @ r).mean()
            else:
                loss = loss_fn(head(torch_features(h_n, case)).float(), y)
        loss.backward()
        opt.step()

    return train


def torch_train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _torch_train(case, rng, threads, bf16=False)


def torch_features(h_n: Any, case: Case) -> Any:
    """The top layer's final states, both directions side by side (lstmcore's features)."""
    import torch

    return torch.cat(list(h_n[-case.directions :]), dim=1)


def torch_infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    import torch

    lstm, head, _ = _torch_model(case, threads, batch_first=True)
    x = torch.from_numpy(rng.random((case.B, case.T, case.I), dtype=np.float32))

    def infer() -> None:
        with torch.inference_mode():
            _, (h_n, _) = lstm(x)
            head(h_n[0])

    return infer


def torch_bf16_train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _torch_train(case, rng, threads, bf16=True)


def torch_bf16_infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    import torch

    lstm, head, _ = _torch_model(case, threads, batch_first=True)
    x = torch.from_numpy(rng.random((case.B, case.T, case.I), dtype=np.float32))

    def infer() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            _, (h_n, _) = lstm(x)
            head(h_n[0])

    return infer


def _torch_varlen(case: Case, rng: np.random.Generator, threads: int, packed: bool) -> Step:
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm, head, opt = _torch_model(case, threads, batch_first=False)  # time-major, as ops
    x = torch.from_numpy(rng.random((case.T, case.B, case.I), dtype=np.float32))
    labels = torch.from_numpy(rng.integers(0, CLASSES, case.B))
    lengths = torch.from_numpy(case_lengths(case))  # int64 on the CPU, as torch wants
    loss_fn = torch.nn.CrossEntropyLoss()

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        if packed:
            out, (h_n, _) = lstm(pack_padded_sequence(x, lengths, enforce_sorted=False))
            pad_packed_sequence(out, total_length=case.T)  # y, as the padded contenders give
        else:
            _, (h_n, _) = lstm(x)
        loss_fn(head(h_n[0]), labels).backward()
        opt.step()

    return train


def torch_varlen_packed(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _torch_varlen(case, rng, threads, packed=True)


def torch_varlen_padded(case: Case, rng: np.random.Generator, threads: int) -> Step:
    return _torch_varlen(case, rng, threads, packed=False)


def lstmcore_stream(case: Case, rng: np.random.Generator, threads: int) -> Step:
    lstm = nn.LSTM(case.I, case.H, rng=np.random.default_rng(0), forget_bias=FORGET_BIAS)
    stream = lstm.stream(case.B)
    x = rng.random((case.B, case.I), dtype=np.float32)

    def step() -> None:
        stream.step(x)

    return step


def torch_stream(case: Case, rng: np.random.Generator, threads: int) -> Step:
    """torch.nn.LSTM on one time step with its state carried ((h, c) fed back)."""
    import torch

    lstm, _, _ = _torch_model(case, threads, batch_first=False)
    x = torch.from_numpy(rng.random((1, case.B, case.I), dtype=np.float32))
    state = [torch.zeros(1, case.B, case.H), torch.zeros(1, case.B, case.H)]

    def step() -> None:
        with torch.inference_mode():
            _, (h, c) = lstm(x, (state[0], state[1]))
        state[0], state[1] = h, c

    return step


def onnx_stream_model(w_ih: Array, w_hh: Array, bias: Array, case: Case) -> bytes:
    """ONNX's LSTM op on one step: inputs x (1, B, I), h, c (1, B, H); outputs h, c."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h = case.H
    order = np.r_[0:h, 3 * h : 4 * h, h : 2 * h, 2 * h : 3 * h]  # i, o, f, g(=c)
    tensors = {
        "W": w_ih[order][None],
        "R": w_hh[order][None],
        "B": np.concatenate([bias[order], np.zeros(4 * h, np.float32)])[None],
    }
    node = helper.make_node(
        "LSTM", ["x", "W", "R", "B", "", "h", "c"], ["", "h_out", "c_out"], hidden_size=h
    )
    state: list[str | int | None] = [1, "B", h]
    graph = helper.make_graph(
        [node],
        "lstm_step",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "B", case.I]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("c", TensorProto.FLOAT, state),
        ],
        [
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, state),
            helper.make_tensor_value_info("c_out", TensorProto.FLOAT, state),
        ],
        initializer=[numpy_helper.from_array(a, name) for name, a in tensors.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def onnx_stream(case: Case, rng: np.random.Generator, threads: int) -> Step:
    """onnxruntime's LSTM op on a T=1 graph, the state fed back in; checked against
    lstmcore's stream over a few steps first."""
    lstm = nn.LSTM(case.I, case.H, rng=np.random.default_rng(0), forget_bias=FORGET_BIAS)
    p = lstm.params
    bias = p["bias_ih_l0"] + p["bias_hh_l0"]
    session = onnx_session(
        onnx_stream_model(p["weight_ih_l0"], p["weight_hh_l0"], bias, case), threads
    )
    x = rng.random((1, case.B, case.I), dtype=np.float32)
    state = {
        "h": np.zeros((1, case.B, case.H), np.float32),
        "c": np.zeros((1, case.B, case.H), np.float32),
    }
    ours = lstm.stream(case.B)
    for _ in range(3):
        theirs, c = session.run(["h_out", "c_out"], {"x": x, **state})
        state = {"h": theirs, "c": c}
        diff = float(np.max(np.abs(theirs[0] - ours.step(x[0]))))
        if diff > ONNX_TOLERANCE:
            raise RefusedError(f"onnxruntime refused for {case.name}: state differs by {diff:.2e}")

    def step() -> None:
        h, c = session.run(["h_out", "c_out"], {"x": x, **state})
        state["h"], state["c"] = h, c

    return step


@dataclass(frozen=True)
class Weights:
    """One classifier's float32 weights in lstmcore's layout (torch's gates i, f, g, o)."""

    w_ih: Array  # (4H, I)
    w_hh: Array  # (4H, H)
    bias: Array  # (4H,): torch's b_ih + b_hh
    head_w: Array  # (C, H)
    head_b: Array  # (C,)

    @staticmethod
    def random(case: Case, rng: np.random.Generator) -> Weights:
        bound = 1.0 / np.sqrt(case.H)

        def draw(*shape: int) -> Array:
            return rng.uniform(-bound, bound, shape).astype(np.float32)

        h4 = 4 * case.H
        return Weights(
            draw(h4, case.I), draw(h4, case.H), draw(h4), draw(CLASSES, case.H), draw(CLASSES)
        )


def onnx_model(w: Weights, case: Case) -> bytes:
    """The classifier as ONNX: Transpose (B,T,I) -> (T,B,I), ONNX's LSTM op, Squeeze, Gemm.

    ONNX orders the gates i, o, f, c where torch has i, f, g, o; W is (1, 4H, I), R (1, 4H, H)
    and B (1, 8H) = [Wb, Rb]: lstmcore's one bias goes into Wb, Rb is zero."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h = case.H
    order = np.r_[0:h, 3 * h : 4 * h, h : 2 * h, 2 * h : 3 * h]  # i, o, f, g(=c)
    bias = np.concatenate([w.bias[order], np.zeros(4 * h, np.float32)])
    tensors = {
        "W": w.w_ih[order][None],
        "R": w.w_hh[order][None],
        "B": bias[None],
        "head_w": w.head_w,
        "head_b": w.head_b,
        "axis0": np.zeros(1, np.int64),
    }
    nodes = [
        helper.make_node("Transpose", ["images"], ["x"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h_n"], hidden_size=h),
        helper.make_node("Squeeze", ["h_n", "axis0"], ["h"]),
        helper.make_node("Gemm", ["h", "head_w", "head_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "lstm_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", case.T, case.I])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", CLASSES])],
        initializer=[numpy_helper.from_array(a, name) for name, a in tensors.items()],
    )
    # opset 17 / IR 8: old enough for any onnxruntime of the last years, new enough for
    # Squeeze's axes as an input
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def onnx_session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def lstmcore_logits(w: Weights, images: Array) -> Array:
    """lstmcore's logits for the same weights: the oracle onnxruntime is checked against."""
    x = np.ascontiguousarray(images.transpose(1, 0, 2))
    _, h_n, _, _ = ops.lstm_forward(x, None, None, w.w_ih, w.w_hh, w.bias, need_y=False)
    logits: Array = ops.matmul(h_n, w.head_w, trans_b=True) + w.head_b
    return logits


def onnx_checked(case: Case, rng: np.random.Generator, threads: int) -> tuple[Any, Array, float]:
    """(onnxruntime session, input images, max abs logit difference against lstmcore)."""
    w = Weights.random(case, rng)
    images = rng.random((case.B, case.T, case.I), dtype=np.float32)
    session = onnx_session(onnx_model(w, case), threads)
    (logits,) = session.run(["logits"], {"images": images})
    return session, images, float(np.max(np.abs(logits - lstmcore_logits(w, images))))


def onnx_infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    session, images, diff = onnx_checked(case, rng, threads)
    if not diff <= ONNX_TOLERANCE:  # NaN refuses too
        raise RefusedError(
            f"onnxruntime refused for {case.name}: its logits differ from lstmcore's on the "
            f"same weights by {diff:.3g} (tolerance {ONNX_TOLERANCE:g})"
        )
    feed = {"images": images}

    def infer() -> None:
        session.run(["logits"], feed)

    return infer


def _keras_model(case: Case) -> Any:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RefusedError(f"keras uses the {keras.backend.backend()} backend, not jax: skipped")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((case.T, case.I)), keras.layers.LSTM(case.H), keras.layers.Dense(CLASSES)]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        jit_compile=True,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def keras_train(case: Case, rng: np.random.Generator, threads: int) -> Step:
    single_layer_classifier(case, "keras")
    model = _keras_model(case)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)
    y = rng.integers(0, CLASSES, case.B)

    def train() -> None:
        model.train_on_batch(x, y)

    return train


def keras_infer(case: Case, rng: np.random.Generator, threads: int) -> Step:
    model = _keras_model(case)
    x = rng.random((case.B, case.T, case.I), dtype=np.float32)

    def infer() -> None:
        model.predict_on_batch(x)

    return infer


Builder = Callable[[Case, np.random.Generator, int], Step]
# (family, kind) -> {contender name: builder}; a missing pair: the family does not run that kind
BUILDERS: dict[tuple[str, str], dict[str, Builder]] = {
    ("lstmcore", "train"): {"lstmcore": lstmcore_train, "lstmcore-bf16": lstmcore_bf16_train},
    ("lstmcore", "infer"): {"lstmcore": lstmcore_infer, "lstmcore-bf16": lstmcore_bf16_infer},
    ("lstmcore", "varlen"): {
        "lstmcore-lengths": lstmcore_varlen_lengths,
        "lstmcore-padded": lstmcore_varlen_padded,
    },
    ("reference", "train"): {"reference": reference_train},
    ("reference", "infer"): {"reference": reference_infer},
    ("torch", "train"): {"torch": torch_train, "torch-bf16": torch_bf16_train},
    ("torch", "infer"): {"torch": torch_infer, "torch-bf16": torch_bf16_infer},
    ("torch", "varlen"): {"torch-packed": torch_varlen_packed, "torch-padded": torch_varlen_padded},
    ("onnxruntime", "infer"): {"onnxruntime": onnx_infer},
    ("lstmcore", "stream"): {"lstmcore": lstmcore_stream},
    ("torch", "stream"): {"torch": torch_stream},
    ("onnxruntime", "stream"): {"onnxruntime": onnx_stream},
    ("keras", "train"): {"keras": keras_train},
    ("keras", "infer"): {"keras": keras_infer},
}
# the order of the table's columns and rows, whatever order the workers finished in
CONTENDERS = list(dict.fromkeys(name for builders in BUILDERS.values() for name in builders))
BASELINES = ("lstmcore", "lstmcore-lengths", "lstmcore-padded")  # "x lstmcore": the first found
BF16 = "-bf16"  # the suffix of every bf16 contender; its baseline is lstmcore-bf16
PRECISIONS = {"fp32": ("fp32",), "bf16": ("bf16",), "both": ("fp32", "bf16")}


def precision_of(contender: str) -> str:
    return "bf16" if contender.endswith(BF16) else "fp32"


def baseline(contender: str, present: Sequence[str]) -> str | None:
    """The lstmcore contender a row's "x lstmcore" compares with: the same precision's."""
    if precision_of(contender) == "bf16":
        return "lstmcore" + BF16 if "lstmcore" + BF16 in present else None
    return next((b for b in BASELINES if b in present), None)


def unavailable(family: str, threads: int) -> str | None:
    """Why a family cannot run here (None: it can), found without importing it: an import
    would start nothing, but the parent of isolated runs should stay free of peers."""
    missing = {
        "torch": ("torch",),
        "onnxruntime": ("onnx", "onnxruntime"),
        "keras": ("keras", "jax"),
    }.get(family, ())
    absent = [m for m in missing if find_spec(m) is None]
    if absent:
        names = ", ".join(absent)
        return f"{family} skipped: {names} not importable (pip install {' '.join(absent)})"
    if family == "keras" and threads != all_cores():
        return f"keras runs only with all cores (XLA sizes its pool once), not with {threads}"
    return None


# ---- measurement ---------------------------------------------------------------------------


def all_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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


@dataclass(frozen=True)
class Plan:
    """What one process measures: these families' contenders on these cases."""

    families: tuple[str, ...]
    cases: tuple[str, ...]
    threads: int
    repeats: int | None  # None: each case's own step count
    warmup: int
    block: int
    precisions: tuple[str, ...] = ("fp32",)


Times = dict[str, dict[str, list[float]]]  # case -> contender -> seconds per timed step


def run_plan(plan: Plan, notes: list[str]) -> Times:
    """Builds and times every contender of the plan in this process, case by case."""
    lstmcore.set_num_threads(plan.threads)
    out: Times = {}
    for name in plan.cases:
        case = ALL_CASES[name]
        steps = build_steps(plan.families, case, plan.threads, notes, plan.precisions)
        if steps:
            out[name] = measure(steps, plan.repeats or case.steps, plan.warmup, plan.block)
        print(f"  measured {name} with {plan.threads} thread(s)", file=sys.stderr)
    return out


def build_steps(
    families: Sequence[str],
    case: Case,
    threads: int,
    notes: list[str],
    precisions: Sequence[str] = ("fp32",),
) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    for family in families:
        why = unavailable(family, threads)
        if why is not None:
            add_note(notes, why)
            continue
        for contender, make in BUILDERS.get((family, case.kind), {}).items():
            if precision_of(contender) not in precisions:
                continue
            try:
                steps[contender] = make(case, np.random.default_rng(0), threads)
            except RefusedError as refused:
                add_note(notes, str(refused))
    return steps


def add_note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


# ---- isolated mode: one process per library, alternated over rounds ------------------------

RoundTimes = dict[int, dict[str, dict[str, list[list[float]]]]]  # threads -> case -> name -> rounds


def worker_env(threads: int) -> dict[str, str]:
    """The worker's environment: every pool sized to the row's threads before any library
    loads (numpy's own BLAS, used by the reference, reads these only at start-up)."""
    env = dict(os.environ)
    for var in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "LSTMCORE_NUM_THREADS",
    ):
        env[var] = str(threads)
    return env


def run_worker(plan: Plan, notes: list[str]) -> Times:
    """Runs the plan in a fresh process (``--worker``) and returns its times ({} on failure,
    with a note)."""
    command = [sys.executable, "-m", "lstmcore.bench", "--worker", json.dumps(asdict(plan))]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=worker_env(plan.threads),
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        add_note(notes, f"{'/'.join(plan.families)} worker failed ({done.returncode}): {tail}")
        return {}
    result = json.loads(lines[-1])  # the last line: anything a library printed comes before
    for note in result["notes"]:
        add_note(notes, note)
    times: Times = result["times"]
    return times


def run_isolated(
    base: Plan, threads_list: Sequence[int], rounds: int, notes: list[str]
) -> RoundTimes:
    """Each of the base plan's families alone in its own process, at every thread count; the
    order rotates every round so that no family always runs first (or after a heavy one)."""
    families = base.families
    out: RoundTimes = {t: {} for t in threads_list}
    for r in range(rounds):
        order = [*families[r % len(families) :], *families[: r % len(families)]]
        for threads in threads_list:
            for family in order:
                mine = tuple(c for c in base.cases if (family, ALL_CASES[c].kind) in BUILDERS)
                why = unavailable(family, threads)
                if why is not None:
                    add_note(notes, why)
                if why is not None or not mine:
                    continue
                plan = replace(base, families=(family,), cases=mine, threads=threads)
                start = time.perf_counter()
                for case, by_name in run_worker(plan, notes).items():
                    for name, t in by_name.items():
                        out[threads].setdefault(case, {}).setdefault(name, []).append(t)
                print(
                    f"round {r + 1}/{rounds}: {family} with {threads} thread(s) "
                    f"{time.perf_counter() - start:.1f} s",
                    file=sys.stderr,
                )
    return out


# ---- the report ----------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The vector extensions that decide which kernels run (x86 Linux; [] elsewhere)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def isa_path() -> str:
    """The instruction set of lstmcore's CPU kernels (avx512, avx2 or generic)."""
    return lstmcore.isa()


def versions() -> dict[str, str]:
    """Installed versions (read from the package metadata: nothing is imported)."""
    out = {"python": platform.python_version(), "lstmcore": lstmcore.__version__}
    for dist in ("numpy", "torch", "onnx", "onnxruntime", "keras", "jax"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def header(mode: str, rounds: int, ceilings: dict[int, float]) -> dict[str, Any]:
    return {
        "mode": mode,
        "rounds": rounds,
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": all_cores(),
        "isa": isa_path(),
        "isa_bf16": lstmcore.isa("bf16"),
        "blas_core": core.blas_core_name(),
        "versions": versions(),
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "ceilings_flops": ceilings,
    }


def print_header(h: dict[str, Any]) -> None:
    how = (
        f"isolated, {h['rounds']} round(s): each library alone in its own process"
        if h["mode"] == "isolated"
        else "interleaved in one process"
    )
    print(f"lstmcore benchmark ({how})")
    flags = " ".join(h["cpu_flags"]) or "none found"
    print(f"CPU: {h['cpu']} ({flags}); {h['cores']} cores, {h['usable_cores']} usable")
    print(
        f"lstmcore {h['versions']['lstmcore']}: ISA path {h['isa']} (bf16: {h['isa_bf16']}), "
        f"BLAS {h['blas_core']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items()))
    env = ", ".join(f"{k}={'(not set)' if v is None else v}" for k, v in h["openblas_env"].items())
    print(f"environment: {env}")
    rates = ", ".join(f"{t} thread(s) {c / 1e9:.1f}" for t, c in h["ceilings_flops"].items())
    print(f"sgemm rate of lstmcore's BLAS (GFLOP/s): {rates}")


def summarise(
    case: Case, threads: int, times: dict[str, list[list[float]]], ceiling: float
) -> list[dict[str, Any]]:
    """One row per contender; ``times[name]`` is a list of rounds (interleaved: one round)."""
    work = flops(case)
    medians = {name: [float(np.median(r)) for r in rounds] for name, rounds in times.items()}
    mid = {name: float(np.median(m)) for name, m in medians.items()}
    rows = []
    for name in sorted(times, key=CONTENDERS.index):
        base_name = baseline(name, list(mid))
        base = mid[base_name] if base_name is not None else None
        rounds = times[name]
        steps = np.concatenate(rounds)
        q1, q3 = (float(v) for v in np.percentile(steps, [25, 75]))
        med = mid[name]
        rows.append(
            {
                "shape": case.name,
                "kind": case.kind,
                "T": case.T,
                "B": case.B,
                "I": case.I,
                "H": case.H,
                "threads": threads,
                "contender": name,
                "precision": precision_of(name),
                "steps": int(steps.size),
                "rounds": len(rounds),
                "median_ms": 1e3 * med,
                "iqr_ms": 1e3 * (q3 - q1),
                # isolated mode: the spread of the rounds' medians (None for a single round)
                "range_ms": [1e3 * min(medians[name]), 1e3 * max(medians[name])]
                if len(rounds) > 1
                else None,
                "round_medians_ms": [1e3 * m for m in medians[name]],
                "samples_per_s": case.B / med,
                "flops": work,
                "gflops": work / med / 1e9,
                "time_vs_lstmcore": med / base if base else None,
                "fraction_of_floor": (work / ceiling) / med,
                **({"sum_lengths": int(case_lengths(case).sum())} if case.kind == "varlen" else {}),
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]], mode: str) -> None:
    spread = "range ms" if mode == "isolated" else "IQR ms"
    head = (
        f"{'case':<14}{'kind':<7}{'thr':>4} {'contender':<17}{'median ms':>11} {spread:>19}"
        f"{'samples/s':>11}{'GFLOP/s':>9}{'x lstmcore':>11}{'of floor':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["range_ms"] is not None:  # None: one round only (a worker failed in the other)
            lo, hi = r["range_ms"]
            width = f"{lo:.3g}-{hi:.3g}"
        else:
            width = f"{r['iqr_ms']:.3g}"
        ratio = f"{r['time_vs_lstmcore']:.2f}" if r["time_vs_lstmcore"] else ""
        print(
            f"{r['shape']:<14}{r['kind']:<7}{r['threads']:>4} {r['contender']:<17}"
            f"{r['median_ms']:>11.3f} {width:>19}{r['samples_per_s']:>11.0f}"
            f"{r['gflops']:>9.1f}{ratio:>11}{100 * r['fraction_of_floor']:>8.0f}%"
        )


def markdown_table(rows: list[dict[str, Any]], mode: str) -> str:
    """One table per kind, its contenders side by side: `median (lo-hi)` ms in isolated mode,
    the median otherwise; "of floor" is lstmcore's (the first baseline found in the line)."""
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    return "\n".join(markdown_kind([r for r in rows if r["kind"] == k], mode) for k in kinds)


def markdown_kind(rows: list[dict[str, Any]], mode: str) -> str:
    names = list(dict.fromkeys(r["contender"] for r in rows))
    groups: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["shape"], r["threads"]), {})[r["contender"]] = r
    kind = rows[0]["kind"]
    lines = [
        f"| {kind} (ms) | T, B, I, H | threads | " + " | ".join(names) + " | of floor |",
        "|" + " --- |" * (4 + len(names)),
    ]
    for (case, threads), by in groups.items():
        first = next(iter(by.values()))
        dims = f"{first['T']}, {first['B']}, {first['I']}, {first['H']}"
        cells = [markdown_cell(by[n], mode) if n in by else "" for n in names]
        base_name = next((n for n in names if n in by and baseline(n, list(by)) == n), None)
        base = by[base_name] if base_name is not None else None
        floor = f"{100 * base['fraction_of_floor']:.0f}%" if base else ""
        lines.append(f"| {case} | {dims} | {threads} | " + " | ".join(cells) + f" | {floor} |")
    return "\n".join(lines) + "\n"


def markdown_cell(row: dict[str, Any], mode: str) -> str:
    if mode == "isolated" and row["range_ms"] is not None:
        lo, hi = row["range_ms"]
        return f"{row['median_ms']:.3g} ({lo:.3g}-{hi:.3g})"
    return f"{row['median_ms']:.3g}"


# ---- the command line ----------------------------------------------------------------------


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else argparse's one `error:` line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lstmcore.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mode",
        choices=("isolated", "interleaved"),
        default="isolated",
        help="isolated (default): each library in its own process, alternated over rounds; "
        "interleaved: all in one process, steps interleaved in blocks",
    )
    parser.add_argument(
        "--rounds",
        type=int_at_least(1),
        default=None,
        help="isolated mode: rounds over all libraries (default 3)",
    )
    parser.add_argument(
        "--threads",
        type=int_at_least(1, MAX_THREADS),
        nargs="+",
        default=None,
        help=f"thread counts to run (default: 1 and all cores, here {all_cores()})",
    )
    parser.add_argument(
        "--cases",
        "--shapes",
        dest="cases",
        nargs="+",
        default=None,
        metavar="CASE",
        help=f"subset of the cases, or a group of them (grid: the training grid; stream: the "
        f"streaming steps): {', '.join(ALL_CASES)} (default: the main cases; with --quick the "
        "tiny ones)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=FAMILIES,
        default=None,
        metavar="NAME",
        help=f"libraries to run, of {', '.join(FAMILIES)} (default: all that are installed)",
    )
    parser.add_argument(
        "--repeats",
        type=int_at_least(1),
        default=None,
        help="timed steps per contender (and round) for every case (default: per case, "
        ">= 20 for all but pixel-mnist and varlen-long)",
    )
    parser.add_argument(
        "--warmup",
        type=int_at_least(0),
        default=2,
        help="untimed steps per contender before timing (default 2)",
    )
    parser.add_argument(
        "--block",
        type=int_at_least(1),
        default=3,
        help="interleaving: timed steps per contender before switching to the next, after one "
        "untimed step (default 3)",
    )
    parser.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default="fp32",
        help="fp32 (default); bf16: lstmcore-bf16 and torch-bf16 (bf16 autocast) only; both",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the NumPy reference (slow at large shapes)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny cases and a 512^3 sgemm for the rate: a smoke test, not a measurement",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every measurement here")
    parser.add_argument(
        "--markdown",
        metavar="FILE",
        help="also write the table in Markdown, one line per case and thread count, the "
        "contenders side by side (the README's form)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # isolated mode's child process
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What argparse's types cannot see; every failure is one `error:` line and exit 2,
    before any work."""
    if args.cases:
        unknown = [c for c in args.cases if c not in ALL_CASES and c not in CASE_GROUPS]
        if unknown:
            known = ", ".join([*CASE_GROUPS, *ALL_CASES])
            parser.error(f"--cases: unknown {unknown}; known: {known}")
    if args.rounds is not None and args.mode != "isolated":
        parser.error("--rounds: applies to --mode isolated only")
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            parser.error(f"{flag}: {path} is a directory")
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"{flag}: cannot write into {folder} (missing or not writable)")


def worker_main(parser: argparse.ArgumentParser, spec: str) -> int:
    """Isolated mode's child: runs one plan, prints {"times", "notes"} as the last line."""
    try:
        plan = Plan(**json.loads(spec))
        plan = Plan(
            tuple(plan.families),
            tuple(plan.cases),
            plan.threads,
            plan.repeats,
            plan.warmup,
            plan.block,
            tuple(plan.precisions),
        )
    except (ValueError, TypeError) as bad:
        parser.error(f"--worker: not a plan ({bad})")
    if not set(plan.cases) <= set(ALL_CASES) or not set(plan.families) <= set(FAMILIES):
        parser.error("--worker: unknown case or family")
    notes: list[str] = []
    times = run_plan(plan, notes)
    print(json.dumps({"times": times, "notes": notes}))
    return 0


def selected(args: argparse.Namespace) -> tuple[list[Case], list[str], list[int]]:
    if args.cases:
        names = [
            n
            for c in args.cases
            for n in ([g.name for g in CASE_GROUPS[c]] if c in CASE_GROUPS else [c])
        ]
        cases = [ALL_CASES[n] for n in dict.fromkeys(names)]
    else:
        cases = QUICK if args.quick else CASES
    families = list(args.contenders or FAMILIES)
    if args.no_reference and "reference" in families:
        families.remove("reference")
    threads = sorted(set(args.threads or {1, all_cores()}))
    return cases, families, threads


def sgemm_rates(threads_list: Sequence[int], n: int) -> dict[int, float]:
    """The BLAS's (n, n) sgemm rate per thread count: the best of three medians of five, since
    a floor should not fall because another process took the core for a moment."""
    rates = {}
    for threads in threads_list:
        lstmcore.set_num_threads(threads)
        rates[threads] = 2.0 * n**3 / min(core.time_sgemm(n, 5) for _ in range(3))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker_main(parser, args.worker)
    check_args(parser, args)
    cases, families, threads_list = selected(args)
    ceilings = sgemm_rates(threads_list, 512 if args.quick else 2048)
    rounds = (args.rounds or 3) if args.mode == "isolated" else 1
    names = tuple(c.name for c in cases)
    base = Plan(
        tuple(families),
        names,
        1,
        args.repeats,
        args.warmup,
        args.block,
        PRECISIONS[args.precision],
    )
    notes: list[str] = []
    if args.mode == "isolated":
        results = run_isolated(base, threads_list, rounds, notes)
    else:
        results = {}
        for threads in threads_list:
            once = run_plan(replace(base, threads=threads), notes)
            results[threads] = {c: {n: [t] for n, t in by.items()} for c, by in once.items()}
    rows = [  # a case's thread counts next to each other
        row
        for case in cases
        for threads in threads_list
        if case.name in results[threads]
        for row in summarise(case, threads, results[threads][case.name], ceilings[threads])
    ]
    info = header(args.mode, rounds, ceilings)
    print_header(info)
    for note in notes:
        print(f"note: {note}")
    print_table(rows, args.mode)
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**info, "notes": notes, "rows": rows}, out, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown_table(rows, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
