"""``lstm_forward`` / ``lstm_backward``: NumPy arrays in, NumPy arrays out.

Inputs may have any memory layout (Fortran order, slices, negative strides): they are converted
to C-contiguous arrays here, once. All arrays must share one dtype, float32 or float64; the core
checks every shape and names the argument that is wrong. Outputs are fresh arrays and inputs are
never written. The GIL is released while the core computes.

Shapes (torch.nn.LSTM's): x (T, B, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); bias (4H,);
y (T, B, H); h_n, c_n (B, H).

Zero sizes: T = 0 gives an empty y and returns the initial state (gradients pass straight
through: dh0 = dh_n, dc0 = dc_n, weight gradients zero). B = 0, H = 0 and I = 0 are allowed and
give empty or zero results of the documented shapes.

NaN and Inf follow IEEE arithmetic: a NaN anywhere in x or the weights makes the outputs it
reaches NaN; nothing raises. Saturation: sigmoid(+inf) = 1 and tanh(+-inf) = +-1 exactly;
sigmoid(-inf) is 0 in float64 and below 1e-38 in float32 (the float exp clamps its input).

``x`` and the weights are referenced by the context, not copied: changing them in place between
forward and backward changes the gradients (as in any autograd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore._native import core as _core

__all__ = ["LstmContext", "lstm_backward", "lstm_forward", "matmul"]

_FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
_DEVICES = ("cpu", "cuda")


@dataclass(frozen=True)
class LstmContext:
    """What ``lstm_forward`` keeps for ``lstm_backward``: pass it back unchanged."""

    native: Any
    device: str
    dtype: np.dtype
    shape: tuple[int, int, int, int]  # (T, B, I, H)


def _common_dtype(named: dict[str, Any]) -> np.dtype:
    """The one float dtype all given arrays share; ValueError naming the odd one otherwise."""
    dtype: np.dtype | None = None
    first = ""
    for name, value in named.items():
        if value is None:
            continue
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{name}: expected a numpy array, got {type(value).__name__}")
        if value.dtype not in _FLOAT_TYPES:
            raise ValueError(f"{name}: expected dtype float32 or float64, got {value.dtype}")
        if dtype is None:
            dtype, first = value.dtype, name
        elif value.dtype != dtype:
            raise ValueError(
                f"{name}: dtype {value.dtype} differs from {first}'s {dtype}; "
                "all arrays must share one dtype"
            )
    assert dtype is not None  # x is always given
    return dtype


def _contiguous(value: NDArray[Any] | None) -> NDArray[Any] | None:
    return None if value is None else np.ascontiguousarray(value)


def _check_sizes(x: NDArray[Any], w_hh: NDArray[Any]) -> None:
    """Rejects sizes whose buffers would overflow the core's 32-bit BLAS sizes before anything
    is copied or allocated (a broadcast view can claim terabytes)."""
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions (T, B, I), got {x.shape} {x.dtype}")
    if w_hh.ndim != 2:
        raise ValueError(f"w_hh: expected a 2-d array (4H, H), got {w_hh.shape} {w_hh.dtype}")
    steps, batch, inputs = x.shape
    _core.check_dims(steps, batch, inputs, w_hh.shape[1])


def _check_device(device: str) -> None:
    if device not in _DEVICES:
        raise ValueError(f"device: expected one of {_DEVICES}, got {device!r}")


def _backend(device: str) -> Any:
    """The compiled module that runs on ``device`` (the CUDA one is imported lazily)."""
    if device == "cpu":
        return _core
    from lstmcore import cuda

    return cuda.require()


def lstm_forward(
    x: NDArray[Any],
    h0: NDArray[Any] | None,
    c0: NDArray[Any] | None,
    w_ih: NDArray[Any],
    w_hh: NDArray[Any],
    bias: NDArray[Any],
    *,
    device: str = "cpu",
    reuse: LstmContext | None = None,
    need_y: bool = True,
) -> tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any], LstmContext]:
    """Runs the LSTM over all steps; returns ``(y, h_n, c_n, ctx)``. h0/c0 of None mean zeros.

    ``reuse``: a context from an earlier call that is no longer needed; when its shapes, dtype
    and device match, its buffers are overwritten instead of allocating new ones (the old
    context then describes this call). ``need_y=False`` returns None for y and skips its copy.
    A context serves one thread at a time.
    """
    _check_device(device)
    args = {"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "bias": bias}
    for name in ("x", "w_ih", "w_hh", "bias"):  # h0, c0 alone may be None
        if args[name] is None:
            raise ValueError(f"{name}: expected a numpy array, got None")
    dtype = _common_dtype(args)
    _check_sizes(x, w_hh)
    arrays = {name: _contiguous(value) for name, value in args.items()}
    backend = _backend(device)
    old = reuse.native if reuse is not None and reuse.device == device else None
    y, h_n, c_n, native = backend.forward(**arrays, reuse=old, need_y=need_y)
    ctx = LstmContext(native=native, device=device, dtype=dtype, shape=tuple(native.shape))
    return y, h_n, c_n, ctx


def lstm_backward(
    ctx: LstmContext,
    dy: NDArray[Any] | None,
    dh_n: NDArray[Any] | None,
    dc_n: NDArray[Any] | None,
    *,
    need_dx: bool = True,
) -> tuple[
    NDArray[Any] | None, NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]
]:
    """Backpropagation through time; returns ``(dx, dh0, dc0, dw_ih, dw_hh, dbias)``.

    dy/dh_n/dc_n of None mean zeros. With ``need_dx=False`` dx is None and its GEMM is skipped.
    """
    if not isinstance(ctx, LstmContext):
        kind = type(ctx).__name__
        raise ValueError(f"ctx: expected the LstmContext from lstm_forward, got {kind}")
    grads = {"dy": dy, "dh_n": dh_n, "dc_n": dc_n}
    if any(g is not None for g in grads.values()):
        dtype = _common_dtype(grads)
        if dtype != ctx.dtype:
            raise ValueError(
                f"gradients: dtype {dtype} differs from the forward pass's {ctx.dtype}"
            )
    arrays = {name: _contiguous(value) for name, value in grads.items()}
    backend = _backend(ctx.device)
    grads_out: tuple[Any, ...] = backend.backward(ctx.native, need_dx=need_dx, **arrays)
    dx, dh0, dc0, dw_ih, dw_hh, dbias = grads_out
    return dx, dh0, dc0, dw_ih, dw_hh, dbias


def matmul(
    a: NDArray[Any], b: NDArray[Any], *, trans_a: bool = False, trans_b: bool = False
) -> NDArray[Any]:
    """``op(a) @ op(b)`` for 2-d float32/float64 arrays through the core's BLAS, in the calling
    thread. The layers around the LSTM use it so that numpy's BLAS threads, which keep spinning
    after each call, never compete with the core's threads for the cores."""
    _common_dtype({"a": a, "b": b})  # one float dtype, or ValueError naming the argument
    out: NDArray[Any] = _core.matmul(
        np.ascontiguousarray(a), np.ascontiguousarray(b), trans_a, trans_b
    )
    return out
