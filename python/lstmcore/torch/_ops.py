"""The custom operators under :class:`lstmcore.torch.LSTM`: one LSTM cell (one layer, one
direction) over the whole sequence, as ``torch.library.custom_op`` so that autograd,
``torch.compile`` and ``torch.export`` see one opaque operator each.

Shapes (time-major, as :mod:`lstmcore.ops`): x (T, B, I); h0, c0 (B, H) or None (zeros);
w_ih (4H, I); w_hh (4H, H); b_ih, b_hh (4H,) or None (no bias); lengths (B,) int64 in [1, T]
or None (every row runs every step); y (T, B, H); h_n, c_n (B, H).

- ``lstmcore::lstm(...) -> (y, h_n, c_n, saved)``: the training forward. ``saved`` is a (1,)
  int64 tensor (a zero) whose memory owns what the core kept for backward (the gates of
  every step), found again by its address: the state lives exactly as long as autograd (or a
  compiled graph) holds the tensor, and goes when the graph is freed.
- ``lstmcore::lstm_backward(saved, x, w_ih, w_hh, dy, dh_n, dc_n, need_dx)
  -> (dx, dh0, dc0, dw_ih, dw_hh, dbias)``: its gradients (dx is empty when not needed). x
  and the weights are arguments so that autograd checks their version counters and a
  compiler keeps them alive: the core reads them in backward without a copy.
- ``lstmcore::lstm_inference(...) -> (y, h_n, c_n)``: no gradients; the core keeps nothing.

Tensors reach the core without copies where they are contiguous (``Tensor.numpy()`` views);
the core releases the GIL while it computes, with ``torch.get_num_threads()`` threads.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

import lstmcore
from lstmcore import _precision, ops

__all__ = ["PRECISIONS", "lstm", "lstm_backward", "lstm_inference"]

# the operators' precision argument: the library's names (a custom operator's argument is a str,
# so None, the arrays' own dtype, is spelled "fp32" here)
PRECISIONS = _precision.NAMES

_CELL_ARGS = (
    "Tensor x, Tensor? h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
    "Tensor? lengths, bool reverse, str precision"
)


class _Saved(np.ndarray):  # type: ignore[type-arg, unused-ignore]
    """A (1,) int64 zero that carries one training forward's ``LstmContext``. Through
    ``torch.from_numpy`` torch's storage holds this array, so the context is freed with the
    last tensor sharing that storage (whatever views or saved copies autograd makes); its
    data address names it. The value is a constant so that the operator's outputs are a
    function of its inputs (``torch.library.opcheck`` compares them across runs)."""

    ctx: ops.LstmContext


# data address -> its _Saved array, while any tensor still holds it (the entry goes before the
# array's memory is freed, so a reused address never finds a stale context)
_LIVE: weakref.WeakValueDictionary[int, _Saved] = weakref.WeakValueDictionary()


_Key = tuple[int, int, int, int, str]  # (T, B, I, H, dtype): the buffers a context holds


class _ContextPool:
    """The core's contexts whose forward passes are over (their graph freed, or inference
    done), kept by shape for the next forward of that shape (``ops.lstm_forward(reuse=)``):
    a training loop then allocates no (T, B, 4H) buffers after its first step, as the NumPy
    layers don't (fresh buffers of that size cost page faults worth about a sixth of a
    step). At most ``budget`` bytes are kept, the least recently used shapes dropped first.
    Any thread may give (autograd frees graphs where it runs); take and give hold a lock."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._free: OrderedDict[_Key, list[ops.LstmContext]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def nbytes(key: _Key) -> int:
        steps, batch, _, hidden, dtype = key
        # gates and dgates (T, B, 4H), h_all and c_all (T+1, B, H), tanh_c (T, B, H)
        return (11 * steps + 2) * batch * hidden * np.dtype(dtype).itemsize

    def take(self, key: _Key) -> ops.LstmContext | None:
        with self._lock:
            free = self._free.get(key)
            if not free:
                return None
            ctx = free.pop()
            if not free:
                del self._free[key]
            self._bytes -= self.nbytes(key)
            return ctx

    def give(self, key: _Key, ctx: ops.LstmContext) -> None:
        size = self.nbytes(key)
        if size > self.budget:
            return
        dropped = []  # freed after the lock is released (freeing runs arbitrary finalizers)
        with self._lock:
            self._free.setdefault(key, []).append(ctx)
            self._free.move_to_end(key)
            self._bytes += size
            while self._bytes > self.budget:
                oldest, free = next(iter(self._free.items()))
                dropped.append(free.pop(0))
                if not free:
                    del self._free[oldest]
                self._bytes -= self.nbytes(oldest)
        del dropped

    def clear(self) -> None:
        with self._lock:
            dropped, self._free = self._free, OrderedDict()
            self._bytes = 0
        del dropped


POOL = _ContextPool(256 << 20)


def _array(t: Tensor | None) -> NDArray[Any] | None:
    """A NumPy view of a CPU tensor (no copy; lstmcore.ops copies once if it is strided)."""
    return None if t is None else t.detach().numpy()


def _sync_threads() -> None:
    """The core follows torch's thread count, as torch's own LSTM would."""
    n = torch.get_num_threads()
    if n != lstmcore.get_num_threads():
        lstmcore.set_num_threads(n)


def _core_forward(
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    precision: str,
    for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, ops.LstmContext, _Key]:
    """The core's forward on tensors: (y, h_n, c_n, ctx, key), reusing a pooled context of
    ``key``'s shape when there is one (the caller gives ``ctx`` back once it is done)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    _sync_threads()
    w = w_hh.detach().numpy()
    if b_ih is None or b_hh is None:  # bias=False: both absent
        bias = np.zeros(w.shape[0], dtype=w.dtype)
    else:
        bias = b_ih.detach().numpy() + b_hh.detach().numpy()  # (4H,): the core's one bias
    key = (x.shape[0], x.shape[1], x.shape[2], w.shape[1], str(w.dtype))
    y, h_n, c_n, ctx = ops.lstm_forward(
        x.detach().numpy(),
        _array(h0),
        _array(c0),
        w_ih.detach().numpy(),
        w,
        bias,
        reverse=reverse,
        lengths=None if lengths is None else lengths.numpy(),
        for_backward=for_backward,
        precision=None if precision == "fp32" else precision,
        reuse=POOL.take(key),
    )
    assert y is not None
    return torch.from_numpy(y), torch.from_numpy(h_n), torch.from_numpy(c_n), ctx, key


def _fake_outputs(x: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    steps, batch, hidden = x.shape[0], x.shape[1], w_hh.shape[1]
    return x.new_empty(steps, batch, hidden), x.new_empty(batch, hidden), x.new_empty(batch, hidden)


@torch.library.custom_op(
    "lstmcore::lstm",
    mutates_args=(),
    schema=f"({_CELL_ARGS}) -> (Tensor, Tensor, Tensor, Tensor)",
)  # type: ignore[untyped-decorator, unused-ignore]
def lstm(
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    precision: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The training forward of one cell: (y, h_n, c_n, saved); see the module docstring."""
    y, h_n, c_n, ctx, key = _core_forward(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, precision, True
    )
    saved = np.zeros(1, dtype=np.int64).view(_Saved)
    saved.ctx = ctx
    _LIVE[saved.ctypes.data] = saved
    done = weakref.finalize(saved, POOL.give, key, ctx)  # its buffers serve a later forward
    done.atexit = False  # graphs still alive at exit: nothing to give back
    return y, h_n, c_n, torch.from_numpy(saved)


@lstm.register_fake  # type: ignore[untyped-decorator, unused-ignore]
def _lstm_fake(
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    precision: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    y, h_n, c_n = _fake_outputs(x, w_hh)
    return y, h_n, c_n, x.new_empty(1, dtype=torch.int64)


@torch.library.custom_op(
    "lstmcore::lstm_inference",
    mutates_args=(),
    schema=f"({_CELL_ARGS}) -> (Tensor, Tensor, Tensor)",
)  # type: ignore[untyped-decorator, unused-ignore]
def lstm_inference(
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    precision: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """The forward of one cell with nothing kept for backward: (y, h_n, c_n)."""
    y, h_n, c_n, ctx, key = _core_forward(
        x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, precision, False
    )
    POOL.give(key, ctx)  # the outputs are fresh arrays: the buffers are free again
    return y, h_n, c_n


@lstm_inference.register_fake  # type: ignore[untyped-decorator, unused-ignore]
def _lstm_inference_fake(
    x: Tensor,
    h0: Tensor | None,
    c0: Tensor | None,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    lengths: Tensor | None,
    reverse: bool,
    precision: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _fake_outputs(x, w_hh)


@torch.library.custom_op(
    "lstmcore::lstm_backward",
    mutates_args=(),
    schema=(
        "(Tensor saved, Tensor x, Tensor w_ih, Tensor w_hh, Tensor? dy, Tensor? dh_n, "
        "Tensor? dc_n, bool need_dx) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
)  # type: ignore[untyped-decorator, unused-ignore]
def lstm_backward(
    saved: Tensor,
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    dy: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    need_dx: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dx, dh0, dc0, dw_ih, dw_hh, dbias) of the training forward named by ``saved``; dx
    is an empty tensor when ``need_dx`` is False. None gradients mean zeros."""
    entry = _LIVE.get(saved.data_ptr())
    if entry is None:
        raise RuntimeError(
            "lstmcore::lstm_backward: the forward pass's saved state is gone (its graph was "
            "freed); run the forward pass again"
        )
    _sync_threads()
    dx, dh0, dc0, dw_ih, dw_hh, dbias = ops.lstm_backward(
        entry.ctx, _array(dy), _array(dh_n), _array(dc_n), need_dx=need_dx
    )
    dx_t = torch.from_numpy(dx) if dx is not None else x.new_empty(0)
    return (
        dx_t,
        torch.from_numpy(dh0),
        torch.from_numpy(dc0),
        torch.from_numpy(dw_ih),
        torch.from_numpy(dw_hh),
        torch.from_numpy(dbias),
    )


@lstm_backward.register_fake  # type: ignore[untyped-decorator, unused-ignore]
def _lstm_backward_fake(
    saved: Tensor,
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    dy: Tensor | None,
    dh_n: Tensor | None,
    dc_n: Tensor | None,
    need_dx: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    batch, hidden = x.shape[1], w_hh.shape[1]
    # contiguous, as the core returns them (empty_like would copy a strided x's layout)
    dx = x.new_empty(x.shape) if need_dx else x.new_empty(0)
    return (
        dx,
        x.new_empty(batch, hidden),
        x.new_empty(batch, hidden),
        w_ih.new_empty(w_ih.shape),
        w_hh.new_empty(w_hh.shape),
        w_hh.new_empty(w_hh.shape[0]),
    )


def _lstm_setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, w_ih, w_hh = inputs[0], inputs[3], inputs[4]
    ctx.save_for_backward(output[3], x, w_ih, w_hh)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: zeros to the core


_DOUBLE_BACKWARD = (
    "lstmcore.torch.LSTM: double backward is not supported: its gradients are not "
    "differentiable (create_graph=True works, differentiating the gradients it made does "
    "not); use torch.nn.LSTM where second derivatives are needed"
)


def _undifferentiable(grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
    """``grads`` behind a node that raises _DOUBLE_BACKWARD when differentiated (torch's own
    ``once_differentiable`` mechanism, with lstmcore's message)."""
    present = [g.detach().requires_grad_() for g in grads if g is not None]
    delayed: Any = torch._C._functions.DelayedError(_DOUBLE_BACKWARD.encode(), len(present))
    out = delayed(*present)
    wrapped = iter(out if isinstance(out, tuple) else (out,))
    return tuple(None if g is None else next(wrapped) for g in grads)


def _lstm_grad(
    ctx: Any, dy: Tensor | None, dh_n: Tensor | None, dc_n: Tensor | None, _dsaved: Any
) -> tuple[Tensor | None, ...]:
    saved, x, w_ih, w_hh = ctx.saved_tensors
    need = ctx.needs_input_grad
    create_graph = torch.is_grad_enabled() and not torch.compiler.is_compiling()
    with torch.no_grad():
        dx, dh0, dc0, dw_ih, dw_hh, dbias = lstm_backward(
            saved, x, w_ih, w_hh, dy, dh_n, dc_n, bool(need[0])
        )
        # the two biases enter as a sum: equal gradients, but separate tensors (an in-place
        # clip of one must not scale the other)
        db_hh = dbias.clone() if need[5] and need[6] else dbias
    grads: tuple[Tensor | None, ...] = (
        dx if need[0] else None,
        dh0 if need[1] else None,
        dc0 if need[2] else None,
        dw_ih if need[3] else None,
        dw_hh if need[4] else None,
        dbias if need[5] else None,
        db_hh if need[6] else None,
    )
    if create_graph:  # backward(create_graph=True): first-order gradients, then the error
        grads = _undifferentiable(grads)
    return (*grads, None, None, None)


lstm.register_autograd(_lstm_grad, setup_context=_lstm_setup_context)
