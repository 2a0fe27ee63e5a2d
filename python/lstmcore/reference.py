"""The plain NumPy LSTM: the readable specification of lstmcore and its tests' oracle.

Everything runs in float64 (float32 under ``precision="bf16"``, below), one time step at a
time, exactly as the equations read.
Gate order and weight shapes follow ``torch.nn.LSTM``::

    a_t = x_t @ w_ih.T + h_{t-1} @ w_hh.T + bias        (B, 4H), blocks i, f, g, o
    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

One layer, one direction (:func:`lstm_forward` / :func:`lstm_backward`), one bias (torch's
``bias_ih + bias_hh``). Shapes: x (T, B, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H);
bias (4H,); y (T, B, H); lengths (B,).

- ``reverse=True`` runs the steps t = T-1 .. 0 over the same x; y[t] is the state after
  consuming x[t], and h_n, c_n the state after t = 0.
- ``lengths``: row b takes part in step t iff t < lengths[b] (torch's
  ``pack_padded_sequence(enforce_sorted=False)`` ... ``pad_packed_sequence(total_length=T)``).
  An inactive row keeps its state and outputs zeros; so the forward direction stops at each
  row's last step, and the reverse one starts there (from h0, c0). Gradients arriving in dy
  past a row's end are ignored.

The stack (:func:`stack_forward` / :func:`stack_backward`) is ``torch.nn.LSTM``: ``num_layers``
layers, each one or two directions, with parameters under torch's ``state_dict`` names
(:func:`param_names`, two bias vectors each) and inter-layer dropout given as explicit masks.

Precision, the keyword ``precision`` of all four functions (:data:`PRECISIONS`): ``None`` (the
default) and ``"fp32"`` are the same: no rounding, the arrays' own dtype in ``lstmcore.ops``,
and here the float64 arithmetic above whatever the arrays' dtype (a float64 model may say
``"fp32"``: the name means "no reduced-precision operands", not a cast). Anything else but
``"bf16"`` is a ValueError naming ``precision`` and these values.

``"bf16"`` is the mixed-precision rule, the contract the bf16 kernels (AMX, AVX512-BF16,
emulated) implement: bfloat16 GEMM operands, float32 everywhere else. It accepts float32 arrays
only (float64 or any other dtype is a ValueError naming ``precision``), and every result is
float32 (y, h_n, c_n and every gradient, none of them rounded to bf16).

- ``round_bf16`` (:func:`round_bf16`): float32 -> the nearest bfloat16 value, held in float32;
  round to nearest, ties to even, on the bit pattern (add ``0x7FFF + bit 16``, clear the low 16
  bits). +-inf stay inf; a value that rounds past the largest finite bf16 (0x7F7F0000,
  3.3895e38) becomes inf with its sign, as the hardware conversion (``vcvtneps2bf16``); NaN
  stays NaN, made quiet (sign and top payload kept, bit 22 set). Denormals are rounded exactly
  like any other value, where the hardware flushes them to zero (its conversion and its dot
  products behave as DAZ/FTZ): the difference is below 2^-126 absolute, far inside every
  tolerance the fast paths are held to.
- Forward, each step: ``a_t = f32(bf16(x_t) @ bf16(w_ih).T + bf16(h_{t-1}) @ bf16(w_hh).T)
  + bias``. The kernels accumulate the products in float32 (from the bias); the reference sums
  the rounded operands in float64 (a product of two bf16 values is exact in float32 and in
  float64, so only the summation differs) and rounds the sum to float32 once: the difference
  is a few float32 ulps of the sum, covered by the tolerances. The bias add, the gate
  activations, c, tanh(c) and h are float32; h_{t-1} is rounded only where it enters the GEMM
  (the state carried and returned is the float32 h).
- Backward, each step in reverse: dh, dc and the cell's backward are float32; the gate gradients
  ``dgates`` (the pre-activation gradients, float32) are rounded where they enter a GEMM:
  ``dh_{t-1} = f32(bf16(dgates_t) @ bf16(w_hh))``; after the loop
  ``dx = f32(bf16(dgates) @ bf16(w_ih))``, ``dw_ih = f32(bf16(dgates)^T @ bf16(x))``,
  ``dw_hh = f32(bf16(dgates)^T @ bf16(h_prev))`` (x and h_prev rounded as in the forward), and
  ``dbias`` sums the unrounded float32 dgates. The kernels accumulate the weight gradients in
  float32; the reference in float64, rounded to float32 once.

The context records the rule (``ctx.precision``: None or ``"bf16"``) and backward follows it:
``precision`` given to a backward must name the same rule as the forward's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
# the arithmetic's dtype: float64, or float32 under precision="bf16"
_F = TypeVar("_F", np.float32, np.float64)

PRECISIONS: tuple[str | None, ...] = (None, "fp32", "bf16")

__all__ = [
    "PRECISIONS",
    "ReferenceContext",
    "StackContext",
    "check_lengths",
    "lstm_backward",
    "lstm_forward",
    "param_names",
    "round_bf16",
    "sigmoid",
    "stack_backward",
    "stack_forward",
]


def sigmoid(a: NDArray[_F]) -> NDArray[_F]:
    # split by sign so exp never overflows
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def round_bf16(a: ArrayLike) -> F32:
    """float32 -> float32 values representable in bfloat16: round to nearest, ties to even, on
    the bit pattern; inf stays inf, overflow goes to inf, NaN stays (quiet) NaN, denormals are
    rounded exactly (see the module's notes). Any other dtype is a ValueError: the rule is
    defined on float32 bit patterns, so a float64 value would be rounded twice."""
    arr = np.asarray(a)
    if arr.dtype != np.float32:
        raise ValueError(f"round_bf16: expected float32, got {arr.dtype}")
    bits = arr.astype(np.float32, order="C").view(np.uint32).astype(np.uint64)  # wide: no wrap
    lsb = (bits >> 16) & 1  # the lowest bit bf16 keeps: a tie goes where it is 0
    rounded = (bits + 0x7FFF + lsb) & 0xFFFF0000
    quiet_nan = (bits & 0xFFFF0000) | 0x00400000  # NaN: truncated, quiet bit set
    out = np.where(np.isnan(arr), quiet_nan, rounded).astype(np.uint32)
    return out.view(np.float32)


def _precision(precision: object) -> Literal["bf16"] | None:
    """The rule ``precision`` names: None (no rounding) or "bf16"; ValueError otherwise."""
    if precision is None or (isinstance(precision, str) and precision == "fp32"):
        return None
    if isinstance(precision, str) and precision == "bf16":
        return "bf16"
    allowed = ", ".join(repr(p) for p in PRECISIONS)
    raise ValueError(f"precision: expected one of {allowed}, got {precision!r}")


def _backward_precision(forward: str | None, precision: object) -> None:
    """A backward's ``precision`` (None: the forward's) must name the forward's rule."""
    if precision is not None and _precision(precision) != forward:
        raise ValueError(
            f"precision: the forward ran with precision={forward!r}, backward was given "
            f"precision={precision!r} (backward follows the forward's rule)"
        )


def _require_float32(named: Mapping[str, ArrayLike | None]) -> None:
    """precision="bf16" is defined on float32 arrays: ValueError naming the first other one."""
    for name, value in named.items():
        dtype = None if value is None else np.asarray(value).dtype
        if dtype is not None and dtype != np.float32:
            raise ValueError(
                f"precision='bf16' needs float32 arrays: {name} is {dtype} (a float64 model "
                "runs with precision=None)"
            )


def _operand(a: NDArray[Any], bf16: bool) -> NDArray[Any]:
    """A GEMM operand: under bf16 rounded to bf16 and held in float64 (exactly), so that the
    products are exact and the GEMM sums in float64; otherwise ``a`` itself."""
    return round_bf16(a).astype(np.float64) if bf16 else a


def _result(s: NDArray[Any], bf16: bool) -> NDArray[Any]:
    """A GEMM's sum: under bf16 rounded once to float32 (the kernels' accumulator); otherwise
    ``s`` itself."""
    return s.astype(np.float32) if bf16 else s


def check_lengths(lengths: ArrayLike | None, steps: int, batch: int) -> NDArray[np.int64] | None:
    """``lengths`` as int64 (B,) after checking it: integers in [1, T]; ValueError naming
    ``lengths`` otherwise. None stays None (every row runs every step)."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},), got {arr.shape}")
    if batch and (arr.min() < 1 or arr.max() > steps):
        raise ValueError(
            f"lengths: every length must be in [1, {steps}], got {arr.min()}..{arr.max()}"
        )
    return arr.astype(np.int64)


@dataclass
class ReferenceContext(Generic[_F]):
    """What the reference forward keeps for backward, indexed by time t: float64, or float32
    (unrounded) under precision="bf16"."""

    x: NDArray[_F]  # (T, B, I)
    w_ih: NDArray[_F]  # (4H, I)
    w_hh: NDArray[_F]  # (4H, H)
    h_in: NDArray[_F]  # (T, B, H) the state entering step t
    c_in: NDArray[_F]  # (T, B, H)
    c_out: NDArray[_F]  # (T, B, H) the cell computed at step t (before the length mask)
    gates: NDArray[_F]  # (T, B, 4H) post-activation i, f, g, o
    active: NDArray[np.bool_]  # (T, B) whether row b takes part in step t
    order: list[int]  # the steps in the order they run
    precision: Literal["bf16"] | None = None  # the rule the forward ran (None: no rounding)


def _as(a: ArrayLike | None, shape: tuple[int, ...], dtype: type[_F]) -> NDArray[_F]:
    """``a`` in ``dtype``; None means zeros of ``shape``."""
    return np.zeros(shape, dtype) if a is None else np.asarray(a, dtype=dtype)


def _active(lengths: NDArray[np.int64] | None, steps: int, batch: int) -> NDArray[np.bool_]:
    if lengths is None:
        return np.ones((steps, batch), dtype=bool)
    return np.arange(steps)[:, None] < lengths[None, :]


@overload
def lstm_forward(
    x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, w_ih: ArrayLike, w_hh: ArrayLike,
    bias: ArrayLike, *, reverse: bool = ..., lengths: ArrayLike | None = ...,
    precision: Literal["fp32"] | None = ...,
) -> tuple[F64, F64, F64, ReferenceContext[np.float64]]: ...  # fmt: skip
@overload
def lstm_forward(
    x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, w_ih: ArrayLike, w_hh: ArrayLike,
    bias: ArrayLike, *, reverse: bool = ..., lengths: ArrayLike | None = ...,
    precision: Literal["bf16"],
) -> tuple[F32, F32, F32, ReferenceContext[np.float32]]: ...  # fmt: skip
@overload
def lstm_forward(
    x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, w_ih: ArrayLike, w_hh: ArrayLike,
    bias: ArrayLike, *, reverse: bool = ..., lengths: ArrayLike | None = ...,
    precision: str | None = ...,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], ReferenceContext[Any]]: ...  # fmt: skip


def lstm_forward(
    x: ArrayLike,
    h0: ArrayLike | None,
    c0: ArrayLike | None,
    w_ih: ArrayLike,
    w_hh: ArrayLike,
    bias: ArrayLike,
    *,
    reverse: bool = False,
    lengths: ArrayLike | None = None,
    precision: str | None = None,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], ReferenceContext[Any]]:
    """Returns ``(y, h_n, c_n, ctx)``; ``h0``/``c0`` of None mean zeros. ``precision``: None or
    "fp32" (float64 arithmetic), or "bf16" (float32 arrays in and out; the module's rule)."""
    rule = _precision(precision)
    bf16 = rule == "bf16"
    if bf16:
        _require_float32({"x": x, "h0": h0, "c0": c0, "w_ih": w_ih, "w_hh": w_hh, "bias": bias})
    dtype = np.float32 if bf16 else np.float64
    x = np.asarray(x, dtype=dtype)
    w_ih = np.asarray(w_ih, dtype=dtype)
    w_hh = np.asarray(w_hh, dtype=dtype)
    bias = np.asarray(bias, dtype=dtype)
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    active = _active(check_lengths(lengths, steps, batch), steps, batch)
    order = list(reversed(range(steps))) if reverse else list(range(steps))
    h = _as(h0, (batch, hidden), dtype)
    c = _as(c0, (batch, hidden), dtype)
    y = np.zeros((steps, batch, hidden), dtype)
    h_in, c_in, c_out = np.zeros_like(y), np.zeros_like(y), np.zeros_like(y)
    gates = np.zeros((steps, batch, 4 * hidden), dtype)
    x_op, w_ih_op, w_hh_op = _operand(x, bf16), _operand(w_ih, bf16), _operand(w_hh, bf16)
    for t in order:
        # bf16: x_t, h_{t-1} and the weights rounded, the sum rounded to float32 once
        a = _result(x_op[t] @ w_ih_op.T + _operand(h, bf16) @ w_hh_op.T, bf16) + bias
        i = sigmoid(a[:, 0 * hidden : 1 * hidden])
        f = sigmoid(a[:, 1 * hidden : 2 * hidden])
        g = np.tanh(a[:, 2 * hidden : 3 * hidden])
        o = sigmoid(a[:, 3 * hidden : 4 * hidden])
        h_in[t], c_in[t] = h, c
        c_out[t] = f * c + i * g
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        h_new = o * np.tanh(c_out[t])
        run = active[t][:, None]  # rows past their end keep their state and output 0
        y[t] = np.where(run, h_new, 0.0)
        h = np.where(run, h_new, h)
        c = np.where(run, c_out[t], c)
    ctx = ReferenceContext(
        x=x, w_ih=w_ih, w_hh=w_hh, h_in=h_in, c_in=c_in, c_out=c_out, gates=gates,
        active=active, order=order, precision=rule,
    )  # fmt: skip
    return y, h, c, ctx


def lstm_backward(
    ctx: ReferenceContext[_F],
    dy: ArrayLike | None,
    dh_n: ArrayLike | None,
    dc_n: ArrayLike | None,
    *,
    precision: str | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F], NDArray[_F], NDArray[_F], NDArray[_F]]:
    """Returns ``(dx, dh0, dc0, dw_ih, dw_hh, dbias)``; None gradients mean zeros. The rule is
    the forward's (``ctx.precision``); ``precision``, when given, must name it too. Under bf16
    dy, dh_n and dc_n must be float32."""
    _backward_precision(ctx.precision, precision)
    bf16 = ctx.precision == "bf16"
    if bf16:
        _require_float32({"dy": dy, "dh_n": dh_n, "dc_n": dc_n})
    dtype: type[_F] = ctx.x.dtype.type
    steps, batch, inp = ctx.x.shape
    hidden = ctx.w_hh.shape[1]
    dy = _as(dy, (steps, batch, hidden), dtype)
    dh = _as(dh_n, (batch, hidden), dtype).copy()  # gradient reaching the state from later steps
    dc = _as(dc_n, (batch, hidden), dtype).copy()
    da = np.zeros((steps, batch, 4 * hidden), dtype)  # gradients of the pre-activation gates
    w_hh_op = _operand(ctx.w_hh, bf16)
    for t in reversed(ctx.order):
        run = ctx.active[t][:, None]
        i, f, g, o = np.split(ctx.gates[t], 4, axis=1)
        tanh_c = np.tanh(ctx.c_out[t])
        dh_t = dh + np.where(run, dy[t], 0.0)  # dy past a row's end is ignored
        dc_t = dc + dh_t * o * (1.0 - tanh_c**2)
        da_t = np.concatenate(
            [
                dc_t * g * i * (1.0 - i),
                dc_t * ctx.c_in[t] * f * (1.0 - f),
                dc_t * i * (1.0 - g**2),
                dh_t * tanh_c * o * (1.0 - o),
            ],
            axis=1,
        )
        da[t] = np.where(run, da_t, 0.0)
        # an inactive row's state passed through this step unchanged, and so does its gradient
        dc = np.where(run, dc_t * f, dc)
        # bf16: dgates_t and w_hh rounded where they enter the recurrent GEMM
        dh = np.where(run, _result(_operand(da[t], bf16) @ w_hh_op, bf16), dh)
    rows = da.reshape(steps * batch, 4 * hidden)
    rows_op = _operand(rows, bf16)  # bf16: the rounded dgates feed every GEMM below
    dw_ih = _result(rows_op.T @ _operand(ctx.x, bf16).reshape(steps * batch, inp), bf16)
    dw_hh = _result(rows_op.T @ _operand(ctx.h_in, bf16).reshape(steps * batch, hidden), bf16)
    dbias = _result(rows.astype(np.float64).sum(axis=0), bf16)  # the unrounded dgates
    dx = _result(_operand(da, bf16) @ _operand(ctx.w_ih, bf16), bf16)
    return dx, dh, dc, dw_ih, dw_hh, dbias


# ---- the stack: torch.nn.LSTM -------------------------------------------------------------


def param_names(num_layers: int, bidirectional: bool) -> list[str]:
    """torch.nn.LSTM's parameter names, in its order: per layer, per direction, weight_ih,
    weight_hh, bias_ih, bias_hh (suffix ``_reverse`` for the second direction)."""
    suffixes = ["", "_reverse"] if bidirectional else [""]
    return [
        f"{kind}_l{layer}{suffix}"
        for layer in range(num_layers)
        for suffix in suffixes
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    ]


@dataclass
class StackContext(Generic[_F]):
    """What :func:`stack_forward` keeps for :func:`stack_backward`."""

    cells: list[list[ReferenceContext[_F]]]  # [layer][direction]
    masks: list[NDArray[_F] | None]  # dropout mask applied to layer k's output (k < L - 1)
    hidden: int
    batch_first: bool
    precision: Literal["bf16"] | None = None  # the rule the forward ran (None: no rounding)


@overload
def stack_forward(
    x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, params: Mapping[str, ArrayLike],
    *, num_layers: int = ..., bidirectional: bool = ..., batch_first: bool = ...,
    lengths: ArrayLike | None = ..., dropout_masks: Sequence[ArrayLike | None] | None = ...,
    precision: Literal["fp32"] | None = ...,
) -> tuple[F64, F64, F64, StackContext[np.float64]]: ...  # fmt: skip
@overload
def stack_forward(
    x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, params: Mapping[str, ArrayLike],
    *, num_layers: int = ..., bidirectional: bool = ..., batch_first: bool = ...,
    lengths: ArrayLike | None = ..., dropout_masks: Sequence[ArrayLike | None] | None = ...,
    precision: Literal["bf16"],
) -> tuple[F32, F32, F32, StackContext[np.float32]]: ...  # fmt: skip
@overload
def stack_forward(
    x: ArrayLike, h0: ArrayLike | None, c0: ArrayLike | None, params: Mapping[str, ArrayLike],
    *, num_layers: int = ..., bidirectional: bool = ..., batch_first: bool = ...,
    lengths: ArrayLike | None = ..., dropout_masks: Sequence[ArrayLike | None] | None = ...,
    precision: str | None = ...,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], StackContext[Any]]: ...  # fmt: skip


def stack_forward(
    x: ArrayLike,
    h0: ArrayLike | None,
    c0: ArrayLike | None,
    params: Mapping[str, ArrayLike],
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    batch_first: bool = False,
    lengths: ArrayLike | None = None,
    dropout_masks: Sequence[ArrayLike | None] | None = None,
    precision: str | None = None,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], StackContext[Any]]:
    """torch.nn.LSTM's forward. x (T, B, I) or (B, T, I) with ``batch_first``; h0, c0, h_n,
    c_n (num_layers * D, B, H), D = 2 with ``bidirectional``, entry ``layer * D + direction``;
    y (T, B, D*H) (batch_first: (B, T, D*H)), the forward direction's H columns first.

    ``dropout_masks``: None, or one entry per layer but the last, each None or a time-major
    (T, B, D*H) array multiplied into that layer's output before the next layer reads it
    (torch's dropout: entries 0 or 1/(1-p)).

    ``precision``: as :func:`lstm_forward`, for every layer. Under "bf16" x, h0, c0 and every
    parameter must be float32; the two biases are summed in float32, the masks are taken in
    float32, and each layer rounds its own input (the float32 output of the layer below).
    """
    rule = _precision(precision)
    if rule == "bf16":
        _require_float32({"x": x, "h0": h0, "c0": c0, **params})
    dtype = np.float32 if rule == "bf16" else np.float64
    xs = np.asarray(x, dtype=dtype)
    if batch_first:
        xs = xs.transpose(1, 0, 2)
    batch = xs.shape[1]
    hidden = np.asarray(params["weight_hh_l0"]).shape[1]
    dirs = 2 if bidirectional else 1
    h0s = _as(h0, (num_layers * dirs, batch, hidden), dtype)
    c0s = _as(c0, (num_layers * dirs, batch, hidden), dtype)
    masks = list(dropout_masks) if dropout_masks is not None else [None] * (num_layers - 1)
    if len(masks) != num_layers - 1:
        raise ValueError(f"dropout_masks: expected {num_layers - 1} entries, got {len(masks)}")
    cells: list[list[ReferenceContext[Any]]] = []
    h_n, c_n, kept_masks = [], [], []
    inp = xs
    for layer in range(num_layers):
        outs, row = [], []
        for d in range(dirs):
            k = layer * dirs + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            bias = np.asarray(params["bias_ih" + sfx], dtype) + np.asarray(
                params["bias_hh" + sfx], dtype
            )
            y_d, h_d, c_d, ctx = lstm_forward(
                inp, h0s[k], c0s[k], params["weight_ih" + sfx], params["weight_hh" + sfx],
                bias, reverse=d == 1, lengths=lengths, precision=rule,
            )  # fmt: skip
            outs.append(y_d)
            row.append(ctx)
            h_n.append(h_d)
            c_n.append(c_d)
        cells.append(row)
        inp = np.concatenate(outs, axis=2)
        if layer < num_layers - 1:
            mask = None if masks[layer] is None else np.asarray(masks[layer], dtype=dtype)
            kept_masks.append(mask)
            if mask is not None:
                inp = inp * mask
    y = inp.transpose(1, 0, 2) if batch_first else inp
    ctx_all = StackContext(
        cells=cells, masks=kept_masks, hidden=hidden, batch_first=batch_first, precision=rule
    )
    return y, np.stack(h_n), np.stack(c_n), ctx_all


def stack_backward(
    ctx: StackContext[_F],
    dy: ArrayLike | None,
    dh_n: ArrayLike | None,
    dc_n: ArrayLike | None,
    *,
    precision: str | None = None,
) -> tuple[NDArray[_F], NDArray[_F], NDArray[_F], dict[str, NDArray[_F]]]:
    """Returns ``(dx, dh0, dc0, grads)``, grads under :func:`param_names`; None gradients mean
    zeros. Each bias vector's gradient is the summed bias's (they enter the gates as a sum).
    The rule is the forward's (``ctx.precision``), as in :func:`lstm_backward`; under bf16 the
    gradients given must be float32 and the two directions' dx are summed in float32."""
    _backward_precision(ctx.precision, precision)
    if ctx.precision == "bf16":
        _require_float32({"dy": dy, "dh_n": dh_n, "dc_n": dc_n})
    num_layers, dirs = len(ctx.cells), len(ctx.cells[0])
    steps, batch, _ = ctx.cells[0][0].x.shape
    dtype: type[_F] = ctx.cells[0][0].x.dtype.type
    hidden = ctx.hidden
    if dy is None:
        dys = np.zeros((steps, batch, dirs * hidden), dtype)
    else:
        dys = np.asarray(dy, dtype=dtype)
        if ctx.batch_first:
            dys = dys.transpose(1, 0, 2)
    dh_ns = _as(dh_n, (num_layers * dirs, batch, hidden), dtype)
    dc_ns = _as(dc_n, (num_layers * dirs, batch, hidden), dtype)
    dh0 = np.zeros_like(dh_ns)
    dc0 = np.zeros_like(dc_ns)
    grads: dict[str, NDArray[_F]] = {}
    for layer in reversed(range(num_layers)):
        mask = ctx.masks[layer] if layer < num_layers - 1 else None
        if mask is not None:
            dys = dys * mask
        dx_layer: NDArray[_F] | None = None
        for d in range(dirs):
            k = layer * dirs + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            dy_d = dys[:, :, d * hidden : (d + 1) * hidden]
            dx, dh0[k], dc0[k], dw_ih, dw_hh, dbias = lstm_backward(
                ctx.cells[layer][d], dy_d, dh_ns[k], dc_ns[k]
            )
            dx_layer = dx if dx_layer is None else dx_layer + dx  # both directions read x
            grads["weight_ih" + sfx], grads["weight_hh" + sfx] = dw_ih, dw_hh
            grads["bias_ih" + sfx], grads["bias_hh" + sfx] = dbias, dbias.copy()
        assert dx_layer is not None
        dys = dx_layer
    dx_out = dys.transpose(1, 0, 2) if ctx.batch_first else dys
    return dx_out, dh0, dc0, {name: grads[name] for name in param_names(num_layers, dirs == 2)}
