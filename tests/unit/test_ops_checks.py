"""ops checks every argument's shape before it converts (copies) anything.

A broadcast view claims any size for free; converting it first asked for terabytes and ended
in a MemoryError instead of a ValueError naming the argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from lstmcore import ops

HUGE = (10**6, 10**6)  # 3.64 TiB of float32 if it were ever materialised


def huge() -> Any:
    return np.broadcast_to(np.float32(0), HUGE)


def small_args(rng: np.random.Generator) -> dict[str, Any]:
    t, b, i, h = 3, 2, 4, 5
    return {
        "x": rng.standard_normal((t, b, i)).astype(np.float32),
        "h0": None,
        "c0": None,
        "w_ih": rng.standard_normal((4 * h, i)).astype(np.float32),
        "w_hh": rng.standard_normal((4 * h, h)).astype(np.float32),
        "bias": rng.standard_normal(4 * h).astype(np.float32),
    }


@pytest.mark.parametrize("name", ["h0", "c0", "w_ih", "bias"])
def test_forward_names_a_huge_broadcast_argument(rng: np.random.Generator, name: str) -> None:
    args = small_args(rng)
    args[name] = huge() if name != "bias" else np.broadcast_to(np.float32(0), (10**12,))
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        ops.lstm_forward(**args)


@pytest.mark.parametrize("name", ["h0", "c0", "w_ih", "bias"])
def test_forward_names_a_wrong_shape(rng: np.random.Generator, name: str) -> None:
    args = small_args(rng)
    shape = {"h0": (2, 6), "c0": (3, 5), "w_ih": (20, 3), "bias": (19,)}[name]
    args[name] = rng.standard_normal(shape).astype(np.float32)
    with pytest.raises(ValueError, match=rf"^{name}: expected .* got \({shape[0]},"):
        ops.lstm_forward(**args)


def test_forward_w_hh_must_be_4h_by_h(rng: np.random.Generator) -> None:
    args = small_args(rng)
    args["w_hh"] = rng.standard_normal((5, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"^w_hh: expected shape \(20, 5\) float32, got \(5, 5\)"):
        ops.lstm_forward(**args)


@pytest.mark.parametrize("name", ["dy", "dh_n", "dc_n"])
def test_backward_names_a_huge_broadcast_gradient(rng: np.random.Generator, name: str) -> None:
    ctx = ops.lstm_forward(**small_args(rng))[3]
    grads: dict[str, Any] = {"dy": None, "dh_n": None, "dc_n": None}
    grads[name] = np.broadcast_to(np.float32(0), (10**4, 10**4, 10**4)) if name == "dy" else huge()
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        ops.lstm_backward(ctx, **grads)


def test_matmul_checks_sizes_before_copying() -> None:
    a = np.broadcast_to(np.float32(1), (10**6, 10**5))
    b = np.broadcast_to(np.float32(1), (10**5, 10**6))
    with pytest.raises(ValueError, match=r"32-bit|fit"):
        ops.matmul(a, b)
    with pytest.raises(ValueError, match=r"^b: inner dimension 3 does not match a's 100000"):
        ops.matmul(a, np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"^a: expected a 2-d numpy array"):
        ops.matmul(np.ones(3, dtype=np.float32), np.ones((3, 2), dtype=np.float32))


def test_matmul_transposes_still_agree_with_numpy(rng: np.random.Generator) -> None:
    a = rng.standard_normal((4, 3))
    b = rng.standard_normal((5, 4))
    got = ops.matmul(a, b, trans_a=True, trans_b=True)
    np.testing.assert_allclose(got, a.T @ b.T, rtol=1e-12)
