"""The plain NumPy LSTM: the readable specification of lstmcore and its tests' oracle.

Everything runs in float64, one time step at a time, exactly as the equations read.
Gate order and weight shapes follow ``torch.nn.LSTM`` (one bias, torch's two folded together)::

    a_t = x_t @ w_ih.T + h_{t-1} @ w_hh.T + bias        (B, 4H), blocks i, f, g, o
    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Shapes: x (T, B, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); bias (4H,); y (T, B, H).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]


def sigmoid(a: F64) -> F64:
    # split by sign so exp never overflows
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


@dataclass
class ReferenceContext:
    """What the reference forward keeps for backward (all float64)."""

    x: F64  # (T, B, I)
    w_ih: F64  # (4H, I)
    w_hh: F64  # (4H, H)
    h: F64  # (T+1, B, H): h0, h_1, ..., h_T
    c: F64  # (T+1, B, H): c0, c_1, ..., c_T
    gates: F64  # (T, B, 4H) post-activation i, f, g, o


def _f64(a: ArrayLike | None, shape: tuple[int, ...]) -> F64:
    return np.zeros(shape) if a is None else np.asarray(a, dtype=np.float64)


def lstm_forward(
    x: ArrayLike,
    h0: ArrayLike | None,
    c0: ArrayLike | None,
    w_ih: ArrayLike,
    w_hh: ArrayLike,
    bias: ArrayLike,
) -> tuple[F64, F64, F64, ReferenceContext]:
    """Returns ``(y, h_n, c_n, ctx)``; ``h0``/``c0`` of None mean zeros."""
    x = np.asarray(x, dtype=np.float64)
    w_ih = np.asarray(w_ih, dtype=np.float64)
    w_hh = np.asarray(w_hh, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    steps, batch, _ = x.shape
    hidden = w_hh.shape[1]
    h = np.zeros((steps + 1, batch, hidden))
    c = np.zeros((steps + 1, batch, hidden))
    h[0] = _f64(h0, (batch, hidden))
    c[0] = _f64(c0, (batch, hidden))
    gates = np.zeros((steps, batch, 4 * hidden))
    for t in range(steps):
        a = x[t] @ w_ih.T + h[t] @ w_hh.T + bias
        i = sigmoid(a[:, 0 * hidden : 1 * hidden])
        f = sigmoid(a[:, 1 * hidden : 2 * hidden])
        g = np.tanh(a[:, 2 * hidden : 3 * hidden])
        o = sigmoid(a[:, 3 * hidden : 4 * hidden])
        c[t + 1] = f * c[t] + i * g
        h[t + 1] = o * np.tanh(c[t + 1])
        gates[t] = np.concatenate([i, f, g, o], axis=1)
    ctx = ReferenceContext(x=x, w_ih=w_ih, w_hh=w_hh, h=h, c=c, gates=gates)
    return h[1:].copy(), h[steps].copy(), c[steps].copy(), ctx


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
    dh = _f64(dh_n, (batch, hidden)).copy()  # gradient reaching h_t from later steps
    dc = _f64(dc_n, (batch, hidden)).copy()  # gradient reaching c_t from later steps
    da = np.zeros((steps, batch, 4 * hidden))  # gradients of the pre-activation gates
    for t in reversed(range(steps)):
        i, f, g, o = np.split(ctx.gates[t], 4, axis=1)
        tanh_c = np.tanh(ctx.c[t + 1])
        dh_t = dh + dy[t]
        dc_t = dc + dh_t * o * (1.0 - tanh_c**2)
        da[t] = np.concatenate(
            [
                dc_t * g * i * (1.0 - i),
                dc_t * ctx.c[t] * f * (1.0 - f),
                dc_t * i * (1.0 - g**2),
                dh_t * tanh_c * o * (1.0 - o),
            ],
            axis=1,
        )
        dc = dc_t * f
        dh = da[t] @ ctx.w_hh
    rows = da.reshape(steps * batch, 4 * hidden)
    dw_ih = rows.T @ ctx.x.reshape(steps * batch, inp)
    dw_hh = rows.T @ ctx.h[:steps].reshape(steps * batch, hidden)
    dbias = rows.sum(axis=0)
    dx = da @ ctx.w_ih
    return dx, dh, dc, dw_ih, dw_hh, dbias
