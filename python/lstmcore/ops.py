"""``lstm_forward`` / ``lstm_backward``: NumPy arrays in, NumPy arrays out.

Inputs may have any memory layout (Fortran order, slices, negative strides, unaligned buffers):
they are converted to C-contiguous aligned arrays here, once. All arrays must share one dtype,
float32 or float64; the core checks every shape and names the argument that is wrong. Outputs
are fresh arrays and inputs are never written. The GIL is released while the core computes.

Shapes (torch.nn.LSTM's): x (T, B, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); bias (4H,);
y (T, B, H); h_n, c_n (B, H).

Zero sizes: T = 0 gives an empty y and returns the initial state (gradients pass straight
through: dh0 = dh_n, dc0 = dc_n, weight gradients zero). B = 0, H = 0 and I = 0 are allowed and
give empty or zero results of the documented shapes.

NaN and Inf follow IEEE arithmetic: a NaN anywhere in x or the weights makes the outputs it
reaches NaN; nothing raises. Saturation: in float64 sigmoid(+inf) = 1 and tanh(+-inf) = +-1
exactly; the CPU float32 kernels' polynomial exp and rational tanh stop within one ulp of those
limits (tanh(+-inf) = +-0.99999994, sigmoid(+inf) = 1 or 0.99999994); sigmoid(-inf) is 0 in
float64 and below 1e-38 in float32 (the float exp clamps its input).

Precision: ``precision=None`` (or ``"fp32"``) computes in the arrays' own dtype. ``"bf16"``
(float32 arrays, CPU) is mixed precision: the GEMM operands (x, h, the weights, and in backward
the gate gradients) are rounded to bfloat16, products accumulate in float32, and everything
else (bias, cell math, c, the outputs, every gradient returned) stays float32; the context
carries the precision to ``lstm_backward``. ``lstmcore.reference`` states the rule exactly.
This build runs it on the float32 kernels with rounded operands (``lstmcore.isa("bf16")``).

``x`` and the weights are referenced by the context, not copied: changing them in place between
forward and backward changes the gradients (as in any autograd).

Direction: ``reverse=True`` runs the steps t = T-1 .. 0 over the same x (nothing is copied or
flipped); y[t] is still the state after consuming x[t], and h_n, c_n the state after t = 0.

Variable lengths: ``lengths`` (B,) integers in [1, T], in any order, gives each sequence's
length; row b runs the steps t < lengths[b] only. The result equals torch's
``pack_padded_sequence(x, lengths, enforce_sorted=False)`` through the LSTM and
``pad_packed_sequence(..., total_length=T)``: y is zero past each sequence's end, h_n and c_n
are each sequence's state at its own last step, the reverse direction starts at each
sequence's own last step, and dy past a sequence's end is ignored. The rows are sorted by
length once (longest first) so that at each step only the sequences still running enter the
core's GEMMs and cell math: a batch of lengths uniform in [1, T] costs about half a padded one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _precision, cuda
from lstmcore._native import core as _core

__all__ = ["LstmContext", "lstm_backward", "lstm_forward", "matmul"]

_FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float64))
DEVICES = ("cpu", "cuda")
PRECISIONS = _precision.ACCEPTED


def check_precision(precision: Any, dtype: np.dtype | None = None, device: str = "cpu") -> str:
    """The core's name for ``precision`` ("native" or "bf16"); ValueError naming
    ``precision`` for an unknown value, float64 arrays with bf16, or bf16 on the GPU."""
    if _precision.check_name(precision) != "bf16":
        return "native"
    if dtype is not None and dtype != np.float32:
        raise ValueError(f"precision: bf16 runs on float32 arrays, got {dtype}")
    if device != "cpu":
        raise cuda.refuse("bf16")
    return "bf16"


@dataclass(frozen=True)
class LstmContext:
    """What ``lstm_forward`` keeps for ``lstm_backward``: pass it back unchanged."""

    native: Any
    device: str
    dtype: np.dtype
    shape: tuple[int, int, int, int]  # (T, B, I, H)
    order: NDArray[np.intp] | None = None  # rows sorted by length (None: as given)
    precision: str | None = None  # as given to lstm_forward (backward follows it)
    # the native buffers' forward pass this context describes; a later reuse= of the same
    # buffers moves the native count on and makes this context stale (None: never reused)
    generation: int | None = None


@dataclass(frozen=True)
class _Schedule:
    """Rows sorted longest first (``order``, None when already sorted) and the rows active at
    each step (``batch_sizes`` (T,) int64, the core's form of the lengths)."""

    order: NDArray[np.intp] | None
    batch_sizes: NDArray[np.int64]


def _schedule(lengths: Any, steps: int, batch: int) -> _Schedule:
    """Validates ``lengths`` and turns it into the core's sorted form."""
    if not isinstance(lengths, np.ndarray):
        try:
            lengths = np.asarray(lengths)
        except (TypeError, ValueError) as e:
            kind = type(lengths).__name__
            raise ValueError(f"lengths: expected (B,) integers, got {kind}") from e
    if lengths.dtype == np.bool_ or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths: expected integers, got dtype {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},) (B,), got {lengths.shape}")
    if batch and (lengths.min() < 1 or lengths.max() > steps):
        raise ValueError(
            f"lengths: expected values in [1, T={steps}], got min {lengths.min()} "
            f"max {lengths.max()}"
        )
    lengths = lengths.astype(np.int64)
    order = np.argsort(-lengths, kind="stable")
    counts = np.bincount(lengths, minlength=steps + 1)  # counts[L]: sequences of length L
    batch_sizes = (batch - np.cumsum(counts)[:steps]).astype(np.int64)  # lengths > t
    if np.array_equal(order, np.arange(batch)):
        return _Schedule(None, batch_sizes)
    return _Schedule(order, batch_sizes)


def _rows(a: NDArray[Any] | None, order: NDArray[np.intp] | None, axis: int) -> Any:
    """``a`` with its batch rows taken in ``order`` (None: unchanged)."""
    if a is None or order is None:
        return a
    return np.take(a, order, axis=axis)


def _inverse(order: NDArray[np.intp] | None) -> NDArray[np.intp] | None:
    if order is None:
        return None
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return inverse


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
    """C-contiguous and aligned (the core reads whole aligned elements): a copy only if not."""
    return None if value is None else np.require(value, requirements=("C", "A"))


def _check_shape(name: str, value: NDArray[Any] | None, legend: str, want: tuple[int, ...]) -> None:
    """ValueError naming ``name`` unless ``value`` (None allowed) has shape ``want``."""
    if value is not None and value.shape != want:
        raise ValueError(
            f"{name}: expected shape {want} {value.dtype}, got {value.shape} {value.dtype} "
            f"({name} is {legend})"
        )


def _check_sizes(args: dict[str, NDArray[Any] | None]) -> tuple[int, int, int, int]:
    """(T, B, I, H) after checking every argument's shape and the core's 32-bit BLAS sizes,
    before anything is copied or allocated (a broadcast view can claim terabytes)."""
    x, w_hh = args["x"], args["w_hh"]
    assert x is not None and w_hh is not None  # checked by the caller
    if x.ndim != 3:
        raise ValueError(f"x: expected 3 dimensions (T, B, I), got {x.shape} {x.dtype}")
    if w_hh.ndim != 2:
        raise ValueError(f"w_hh: expected a 2-d array (4H, H), got {w_hh.shape} {w_hh.dtype}")
    steps, batch, inputs = x.shape
    hidden = w_hh.shape[1]
    _check_shape("w_hh", w_hh, "(4H, H)", (4 * hidden, hidden))
    _check_shape("w_ih", args["w_ih"], "(4H, I)", (4 * hidden, inputs))
    _check_shape("bias", args["bias"], "(4H,)", (4 * hidden,))
    _check_shape("h0", args["h0"], "(B, H)", (batch, hidden))
    _check_shape("c0", args["c0"], "(B, H)", (batch, hidden))
    _core.check_dims(steps, batch, inputs, hidden)
    return steps, batch, inputs, hidden


def check_device(device: Any) -> str:
    """``device`` when it is one of :data:`DEVICES`, else ValueError naming it."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    return device


def _backend(device: str) -> Any:
    """The compiled module that runs on ``device`` (the CUDA one is loaded on first use)."""
    if device == "cpu":
        return _core
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
    reverse: bool = False,
    lengths: NDArray[Any] | None = None,
    for_backward: bool = True,
    precision: str | None = None,
) -> tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any], LstmContext]:
    """Runs the LSTM over all steps; returns ``(y, h_n, c_n, ctx)``. h0/c0 of None mean zeros.

    ``reuse``: a context from an earlier call that is no longer needed; when its shapes, dtype
    and device match, its buffers are overwritten instead of allocating new ones (the old
    context then describes this call). ``need_y=False`` returns None for y and skips its copy.
    ``reverse``: run the steps from T-1 down to 0. ``lengths``: (B,) sequence lengths in
    [1, T] (see the module's docstring). ``for_backward=False`` (inference) keeps nothing for
    backward: the CPU core then writes only the states, never the (T, B, 4H) gates, and
    ``lstm_backward`` on its context raises ValueError. ``precision``: None / "fp32" (the
    arrays' dtype) or "bf16" (see the module's docstring). A context serves one call at a time.
    """
    check_device(device)
    args = {"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "bias": bias}
    for name in ("x", "w_ih", "w_hh", "bias"):  # h0, c0 alone may be None
        if args[name] is None:
            raise ValueError(f"{name}: expected a numpy array, got None")
    dtype = _common_dtype(args)
    native_precision = check_precision(precision, dtype, device)
    _check_sizes(args)
    if device != "cpu" and reverse:
        raise cuda.refuse("reverse", "reverse=True")
    if device != "cpu" and lengths is not None:
        raise cuda.refuse("lengths")
    sched = None if lengths is None else _schedule(lengths, x.shape[0], x.shape[1])
    order = None if sched is None else sched.order
    arrays = {name: _contiguous(value) for name, value in args.items()}
    arrays["x"] = _rows(arrays["x"], order, axis=1)
    arrays["h0"] = _rows(arrays["h0"], order, axis=0)
    arrays["c0"] = _rows(arrays["c0"], order, axis=0)
    backend = _backend(device)
    old = reuse.native if reuse is not None and reuse.device == device else None
    extra: dict[str, Any] = {}
    if device == "cpu":
        extra = {
            "reverse": reverse,
            "batch_sizes": None if sched is None else sched.batch_sizes,
            "need_cache": for_backward,
            "precision": native_precision,
        }
    y, h_n, c_n, native = backend.forward(**arrays, reuse=old, need_y=need_y, **extra)
    back = _inverse(order)
    y, h_n, c_n = _rows(y, back, axis=1), _rows(h_n, back, axis=0), _rows(c_n, back, axis=0)
    ctx = LstmContext(
        native=native,
        device=device,
        dtype=dtype,
        shape=tuple(native.shape),
        order=order,
        precision=precision,
        generation=getattr(native, "generation", None),
    )
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
    if ctx.generation is not None and ctx.native.generation != ctx.generation:
        raise ValueError(
            "ctx: stale: a later lstm_forward(reuse=ctx) overwrote its buffers; use the "
            "context that call returned"
        )
    grads = {"dy": dy, "dh_n": dh_n, "dc_n": dc_n}
    if any(g is not None for g in grads.values()):
        dtype = _common_dtype(grads)
        if dtype != ctx.dtype:
            raise ValueError(
                f"gradients: dtype {dtype} differs from the forward pass's {ctx.dtype}"
            )
    steps, batch, _, hidden = ctx.shape
    _check_shape("dy", dy, "(T, B, H)", (steps, batch, hidden))
    _check_shape("dh_n", dh_n, "(B, H)", (batch, hidden))
    _check_shape("dc_n", dc_n, "(B, H)", (batch, hidden))
    arrays = {name: _contiguous(value) for name, value in grads.items()}
    arrays["dy"] = _rows(arrays["dy"], ctx.order, axis=1)
    arrays["dh_n"] = _rows(arrays["dh_n"], ctx.order, axis=0)
    arrays["dc_n"] = _rows(arrays["dc_n"], ctx.order, axis=0)
    backend = _backend(ctx.device)
    grads_out: tuple[Any, ...] = backend.backward(ctx.native, need_dx=need_dx, **arrays)
    dx, dh0, dc0, dw_ih, dw_hh, dbias = grads_out
    back = _inverse(ctx.order)
    dx, dh0, dc0 = _rows(dx, back, axis=1), _rows(dh0, back, axis=0), _rows(dc0, back, axis=0)
    return dx, dh0, dc0, dw_ih, dw_hh, dbias


def matmul(
    a: NDArray[Any], b: NDArray[Any], *, trans_a: bool = False, trans_b: bool = False
) -> NDArray[Any]:
    """``op(a) @ op(b)`` for 2-d float32/float64 arrays through the core's BLAS, in the calling
    thread. The layers around the LSTM use it so that numpy's BLAS threads, which keep spinning
    after each call, never compete with the core's threads for the cores."""
    _common_dtype({"a": a, "b": b})  # one float dtype, or ValueError naming the argument
    for name, value in (("a", a), ("b", b)):
        if value.ndim != 2:
            raise ValueError(f"{name}: expected a 2-d numpy array, got {value.shape} {value.dtype}")
    rows, inner = a.shape[::-1] if trans_a else a.shape
    inner_b, cols = b.shape[::-1] if trans_b else b.shape
    if inner != inner_b:
        raise ValueError(f"b: inner dimension {inner_b} does not match a's {inner}")
    _core.check_matmul(rows, cols, inner)  # before a copy: a broadcast view can claim terabytes
    out: NDArray[Any] = _core.matmul(_contiguous(a), _contiguous(b), trans_a, trans_b)
    return out
