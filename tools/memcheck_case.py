"""A small forward/backward for valgrind's memcheck (run by tools/sanitize.sh)."""

import numpy as np

from lstmcore import ops

rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    T, B, I, H = 5, 9, 3, 7  # noqa: E741 - the shape legend
    x = rng.standard_normal((T, B, I)).astype(dtype)
    w_ih = rng.uniform(-0.3, 0.3, (4 * H, I)).astype(dtype)
    w_hh = rng.uniform(-0.3, 0.3, (4 * H, H)).astype(dtype)
    bias = rng.uniform(-0.3, 0.3, 4 * H).astype(dtype)
    h0 = rng.standard_normal((B, H)).astype(dtype)
    y, h_n, c_n, ctx = ops.lstm_forward(x, h0, None, w_ih, w_hh, bias)
    grads = ops.lstm_backward(ctx, np.ones_like(y), h_n, c_n)
    # branch on every output so memcheck sees any uninitialised value used
    total = sum(float(np.abs(g).sum()) for g in grads) + float(np.abs(y).sum())
    if not np.isfinite(total):
        raise SystemExit("non-finite result")
print("memcheck case done")
