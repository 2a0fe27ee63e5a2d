"""The plain NumPy LSTM: the readable specification of lstmcore and its tests' oracle.

Everything runs in float64, one time step at a time, exactly as the equations read.
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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]

__all__ = [
    "ReferenceContext",
    "StackContext",
    "check_lengths",
    "lstm_backward",
    "lstm_forward",
    "param_names",
    "sigmoid",
    "stack_backward",
    "stack_forward",
]


def sigmoid(a: F64) -> F64:
    # split by sign so exp never overflows
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


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
class ReferenceContext:
    """What the reference forward keeps for backward (all float64), indexed by time t."""

    x: F64  # (T, B, I)
    w_ih: F64  # (4H, I)
    w_hh: F64  # (4H, H)
    h_in: F64  # (T, B, H) the state entering step t
    c_in: F64  # (T, B, H)
    c_out: F64  # (T, B, H) the cell computed at step t (before the length mask)
    gates: F64  # (T, B, 4H) post-activation i, f, g, o
    active: NDArray[np.bool_]  # (T, B) whether row b takes part in step t
    order: list[int]  # the steps in the order they run


def _f64(a: ArrayLike | None, shape: tuple[int, ...]) -> F64:
    return np.zeros(shape) if a is None else np.asarray(a, dtype=np.float64)


def _active(lengths: NDArray[np.int64] | None, steps: int, batch: int) -> NDArray[np.bool_]:
    if lengths is None:
        return np.ones((steps, batch), dtype=bool)
    return np.arange(steps)[:, None] < lengths[None, :]


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
) -> tuple[F64, F64, F64, ReferenceContext]:
    """Returns ``(y, h_n, c_n, ctx)``; ``h0``/``c0`` of None mean zeros."""
    x = np.asarray(x, dtype=np.float64)
    w_ih = np.asarray(w_ih, dtype=np.float64)
    w_hh = np.asarray(w_hh, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    active = _active(check_lengths(lengths, steps, batch), steps, batch)
    order = list(reversed(range(steps))) if reverse else list(range(steps))
    h = _f64(h0, (batch, hidden))
    c = _f64(c0, (batch, hidden))
    y = np.zeros((steps, batch, hidden))
    h_in, c_in, c_out = np.zeros_like(y), np.zeros_like(y), np.zeros_like(y)
    gates = np.zeros((steps, batch, 4 * hidden))
    for t in order:
        a = x[t] @ w_ih.T + h @ w_hh.T + bias
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
        active=active, order=order,
    )  # fmt: skip
    return y, h, c, ctx


def lstm_backward(
    ctx: ReferenceContext,
    dy: ArrayLike | None,
    dh_n: ArrayLike | None,
    dc_n: ArrayLike | None,
) -> tuple[F64, F64, F64, F64, F64, F64]:
    """Returns ``(dx, dh0, dc0, dw_ih, dw_hh, dbias)``; None gradients mean zeros."""
    steps, batch, inp = ctx.x.shape
    hidden = ctx.w_hh.shape[1]
    dy = _f64(dy, (steps, batch, hidden))
    dh = _f64(dh_n, (batch, hidden)).copy()  # gradient reaching the state from later steps
    dc = _f64(dc_n, (batch, hidden)).copy()
    da = np.zeros((steps, batch, 4 * hidden))  # gradients of the pre-activation gates
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
        dh = np.where(run, da[t] @ ctx.w_hh, dh)
    rows = da.reshape(steps * batch, 4 * hidden)
    dw_ih = rows.T @ ctx.x.reshape(steps * batch, inp)
    dw_hh = rows.T @ ctx.h_in.reshape(steps * batch, hidden)
    dbias = rows.sum(axis=0)
    dx = da @ ctx.w_ih
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
class StackContext:
    """What :func:`stack_forward` keeps for :func:`stack_backward`."""

    cells: list[list[ReferenceContext]]  # [layer][direction]
    masks: list[F64 | None]  # dropout mask applied to layer k's output (k < num_layers - 1)
    hidden: int
    batch_first: bool


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
) -> tuple[F64, F64, F64, StackContext]:
    """torch.nn.LSTM's forward. x (T, B, I) or (B, T, I) with ``batch_first``; h0, c0, h_n,
    c_n (num_layers * D, B, H), D = 2 with ``bidirectional``, entry ``layer * D + direction``;
    y (T, B, D*H) (batch_first: (B, T, D*H)), the forward direction's H columns first.

    ``dropout_masks``: None, or one entry per layer but the last, each None or a time-major
    (T, B, D*H) array multiplied into that layer's output before the next layer reads it
    (torch's dropout: entries 0 or 1/(1-p)).
    """
    xs = np.asarray(x, dtype=np.float64)
    if batch_first:
        xs = xs.transpose(1, 0, 2)
    batch = xs.shape[1]
    hidden = np.asarray(params["weight_hh_l0"]).shape[1]
    dirs = 2 if bidirectional else 1
    h0s = _f64(h0, (num_layers * dirs, batch, hidden))
    c0s = _f64(c0, (num_layers * dirs, batch, hidden))
    masks = list(dropout_masks) if dropout_masks is not None else [None] * (num_layers - 1)
    if len(masks) != num_layers - 1:
        raise ValueError(f"dropout_masks: expected {num_layers - 1} entries, got {len(masks)}")
    cells: list[list[ReferenceContext]] = []
    h_n, c_n, kept_masks = [], [], []
    inp = xs
    for layer in range(num_layers):
        outs, row = [], []
        for d in range(dirs):
            k = layer * dirs + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            bias = np.asarray(params["bias_ih" + sfx], np.float64) + np.asarray(
                params["bias_hh" + sfx], np.float64
            )
            y_d, h_d, c_d, ctx = lstm_forward(
                inp, h0s[k], c0s[k], params["weight_ih" + sfx], params["weight_hh" + sfx],
                bias, reverse=d == 1, lengths=lengths,
            )  # fmt: skip
            outs.append(y_d)
            row.append(ctx)
            h_n.append(h_d)
            c_n.append(c_d)
        cells.append(row)
        inp = np.concatenate(outs, axis=2)
        if layer < num_layers - 1:
            mask = None if masks[layer] is None else np.asarray(masks[layer], dtype=np.float64)
            kept_masks.append(mask)
            if mask is not None:
                inp = inp * mask
    y = inp.transpose(1, 0, 2) if batch_first else inp
    ctx_all = StackContext(cells=cells, masks=kept_masks, hidden=hidden, batch_first=batch_first)
    return y, np.stack(h_n), np.stack(c_n), ctx_all


def stack_backward(
    ctx: StackContext,
    dy: ArrayLike | None,
    dh_n: ArrayLike | None,
    dc_n: ArrayLike | None,
) -> tuple[F64, F64, F64, dict[str, F64]]:
    """Returns ``(dx, dh0, dc0, grads)``, grads under :func:`param_names`; None gradients mean
    zeros. Each bias vector's gradient is the summed bias's (they enter the gates as a sum)."""
    num_layers, dirs = len(ctx.cells), len(ctx.cells[0])
    steps, batch, _ = ctx.cells[0][0].x.shape
    hidden = ctx.hidden
    if dy is None:
        dys = np.zeros((steps, batch, dirs * hidden))
    else:
        dys = np.asarray(dy, dtype=np.float64)
        if ctx.batch_first:
            dys = dys.transpose(1, 0, 2)
    dh_ns = _f64(dh_n, (num_layers * dirs, batch, hidden))
    dc_ns = _f64(dc_n, (num_layers * dirs, batch, hidden))
    dh0 = np.zeros_like(dh_ns)
    dc0 = np.zeros_like(dc_ns)
    grads: dict[str, F64] = {}
    for layer in reversed(range(num_layers)):
        mask = ctx.masks[layer] if layer < num_layers - 1 else None
        if mask is not None:
            dys = dys * mask
        dx_layer: F64 | None = None
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
