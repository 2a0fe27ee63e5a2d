"""The NumPy reference against central finite differences (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import Problem, make_problem, numeric_grad, rel_err
from lstmcore import reference as ref

# central differences at eps = 1e-6 are accurate to ~1e-9 relative on these smooth functions
FD_TOL = 1e-7


def loss(p: Problem, use: tuple[bool, bool, bool]) -> float:
    """A scalar whose gradient w.r.t. (y, h_n, c_n) is the chosen subset of (dy, dh_n, dc_n)."""
    y, h_n, c_n, _ = ref.lstm_forward(*p.inputs())
    total = 0.0
    if use[0]:
        total += float(np.sum(y * p.dy))
    if use[1]:
        total += float(np.sum(h_n * p.dh_n))
    if use[2]:
        total += float(np.sum(c_n * p.dc_n))
    return total


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 2, 3, 4), (4, 3, 2, 5)])
@pytest.mark.parametrize(
    "use",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, True)],
    ids=["all", "dy", "dh_n", "dc_n"],
)
def test_reference_gradients_match_finite_differences(
    rng: np.random.Generator, shape: tuple[int, int, int, int], use: tuple[bool, bool, bool]
) -> None:
    p = make_problem(rng, *shape, scale=2.0)  # larger weights: gates away from their linear part
    _, _, _, ctx = ref.lstm_forward(*p.inputs())
    grads = ref.lstm_backward(
        ctx, p.dy if use[0] else None, p.dh_n if use[1] else None, p.dc_n if use[2] else None
    )
    names = ["x", "h0", "c0", "w_ih", "w_hh", "bias"]
    for name, analytic in zip(names, grads, strict=True):
        numeric = numeric_grad(lambda: loss(p, use), getattr(p, name))
        assert np.linalg.norm(numeric) > 0, name  # the check must have something to compare
        err = rel_err(analytic, numeric)
        assert err < FD_TOL, f"d{name}: relative error {err:.2e}"


def test_sigmoid_is_stable_at_extremes() -> None:
    a = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    s = ref.sigmoid(a)
    assert np.all(np.isfinite(s))
    want = [0.0, 1.0 / (1.0 + np.exp(50.0)), 0.5, 1.0 / (1.0 + np.exp(-50.0)), 1.0]
    np.testing.assert_allclose(s, want, rtol=1e-15, atol=0)
