"""A small forward/backward for valgrind's memcheck (run by tools/sanitize.sh): every ISA path
the (emulated) CPU runs, 1 and 2 threads, forward and reverse, with variable lengths."""

import numpy as np

import lstmcore
from lstmcore import ops
from lstmcore._native import core as _core

rng = np.random.default_rng(0)
paths = [name for name in ("avx512", "avx2", "generic") if _core.isa_supported(name)[0]]
for name in paths:
    _core.set_isa(name)
    for threads in (1, 2):
        lstmcore.set_num_threads(threads)
        for dtype in (np.float32, np.float64):
            for reverse, lengths in ((False, None), (True, np.array([5, 2, 4, 1, 5, 3, 3, 2, 5]))):
                T, B, I, H = 5, 9, 3, 7  # noqa: E741 - the shape legend
                x = rng.standard_normal((T, B, I)).astype(dtype)
                w_ih = rng.uniform(-0.3, 0.3, (4 * H, I)).astype(dtype)
                w_hh = rng.uniform(-0.3, 0.3, (4 * H, H)).astype(dtype)
                bias = rng.uniform(-0.3, 0.3, 4 * H).astype(dtype)
                h0 = rng.standard_normal((B, H)).astype(dtype)
                y, h_n, c_n, ctx = ops.lstm_forward(
                    x, h0, None, w_ih, w_hh, bias, reverse=reverse, lengths=lengths
                )
                grads = ops.lstm_backward(ctx, np.ones_like(y), h_n, c_n)
                # branch on every output so memcheck sees any uninitialised value used
                total = sum(float(np.abs(g).sum()) for g in grads) + float(np.abs(y).sum())
                if not np.isfinite(total):
                    raise SystemExit("non-finite result")
print("memcheck case done on", ", ".join(paths))
