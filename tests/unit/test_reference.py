"""The NumPy reference against central finite differences (float64) and against its own
definition of lengths and direction (rows run alone, unpadded; reverse = forward on flipped x)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from helpers import Problem, make_lengths, make_problem, make_stack_params, numeric_grad, rel_err
from lstmcore import reference as ref

# central differences at eps = 1e-6 are accurate to ~1e-9 relative on these smooth functions
FD_TOL = 1e-7


def loss(p: Problem, use: tuple[bool, bool, bool], **kw: Any) -> float:
    """A scalar whose gradient w.r.t. (y, h_n, c_n) is the chosen subset of (dy, dh_n, dc_n)."""
    y, h_n, c_n, _ = ref.lstm_forward(*p.inputs(), **kw)
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
    check_against_fd(lambda: loss(p, use), p, grads)


def check_against_fd(f: Any, p: Problem, grads: tuple[Any, ...]) -> None:
    names = ["x", "h0", "c0", "w_ih", "w_hh", "bias"]
    for name, analytic in zip(names, grads, strict=True):
        numeric = numeric_grad(f, getattr(p, name))
        assert np.linalg.norm(numeric) > 0, name  # the check must have something to compare
        err = rel_err(analytic, numeric)
        assert err < FD_TOL, f"d{name}: relative error {err:.2e}"


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths_kind", ["none", "mixed", "ones"])
def test_direction_and_lengths_gradients_match_finite_differences(
    rng: np.random.Generator, reverse: bool, lengths_kind: str
) -> None:
    p = make_problem(rng, 5, 4, 3, 4, scale=2.0)
    lengths = make_lengths(rng, lengths_kind, 5, 4)
    kw: dict[str, Any] = {"reverse": reverse, "lengths": lengths}
    _, _, _, ctx = ref.lstm_forward(*p.inputs(), **kw)
    # the full dy, padding included: the analytic gradient must ignore dy past each end
    grads = ref.lstm_backward(ctx, p.dy, p.dh_n, p.dc_n)
    check_against_fd(lambda: loss(p, (True, True, True), **kw), p, grads)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_each_row_equals_its_own_unpadded_run(rng: np.random.Generator, reverse: bool) -> None:
    """The definition of lengths: row b is the LSTM run over x[:lengths[b], b] alone; the
    reverse direction starts at the row's own last step; y is zero past the end."""
    steps, batch = 6, 5
    p = make_problem(rng, steps, batch, 3, 4)
    lengths = make_lengths(rng, "mixed", steps, batch)
    assert lengths is not None
    y, h_n, c_n, _ = ref.lstm_forward(*p.inputs(), reverse=reverse, lengths=lengths)
    for b, n in enumerate(lengths):
        alone = ref.lstm_forward(
            p.x[:n, b : b + 1], p.h0[b : b + 1], p.c0[b : b + 1], p.w_ih, p.w_hh, p.bias,
            reverse=reverse,
        )  # fmt: skip
        np.testing.assert_allclose(y[:n, b], alone[0][:, 0], rtol=1e-13, atol=1e-15)
        assert np.all(y[n:, b] == 0.0)
        np.testing.assert_allclose(h_n[b], alone[1][0], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(c_n[b], alone[2][0], rtol=1e-13, atol=1e-15)


def test_reverse_is_forward_over_flipped_time(rng: np.random.Generator) -> None:
    p = make_problem(rng, 5, 3, 2, 4)
    y, h_n, c_n, _ = ref.lstm_forward(*p.inputs(), reverse=True)
    flipped = ref.lstm_forward(p.x[::-1], p.h0, p.c0, p.w_ih, p.w_hh, p.bias)
    np.testing.assert_allclose(y, flipped[0][::-1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(h_n, flipped[1], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(c_n, flipped[2], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "lengths",
    [[3, 3], [0, 2], [1, 4], [1], [[1, 2]], [1.0, 2.0], [True, True]],
    ids=["ok", "zero", "too-long", "short", "2-d", "float", "bool"],
)
def test_bad_lengths_raise_naming_lengths(lengths: list[Any]) -> None:
    x = np.zeros((3, 2, 1))
    w = np.zeros((4, 1))
    if lengths == [3, 3]:
        ref.lstm_forward(x, None, None, w, w, np.zeros(4), lengths=lengths)  # accepted
        return
    with pytest.raises(ValueError, match="lengths"):
        ref.lstm_forward(x, None, None, w, w, np.zeros(4), lengths=lengths)


# ---- the stack -------------------------------------------------------------------------------


# every combination of layers, directions, batch_first and lengths, at a tiny shape (finite
# differences cost two forwards per number), dropout masks wherever a layer is below the top;
# then one larger case
STACKS = [
    (layers, bi, lengths, bf, layers > 1, (3, 2, 1, 2))
    for layers in (1, 2, 3)
    for bi in (False, True)
    for bf in (False, True)
    for lengths in ("equal", "mixed", "ones")
] + [(2, True, "mixed", True, True, (4, 3, 2, 3))]


@pytest.mark.parametrize(
    ("layers", "bidirectional", "lengths_kind", "batch_first", "dropout", "shape"),
    STACKS,
    ids=[f"L{s[0]}-{'bi' if s[1] else 'uni'}-{s[2]}{'-bf' if s[3] else ''}"
         f"{'-drop' if s[4] else ''}-T{s[5][0]}B{s[5][1]}" for s in STACKS],
)  # fmt: skip
def test_stack_gradients_match_finite_differences(
    rng: np.random.Generator,
    layers: int,
    bidirectional: bool,
    lengths_kind: str,
    batch_first: bool,
    dropout: bool,
    shape: tuple[int, int, int, int],
) -> None:
    steps, batch, inp, hidden = shape
    dirs = 2 if bidirectional else 1
    params = make_stack_params(rng, inp, hidden, layers, bidirectional, scale=2.0)
    lengths = make_lengths(rng, lengths_kind, steps, batch)
    x = rng.standard_normal((batch, steps, inp) if batch_first else (steps, batch, inp))
    h0 = rng.standard_normal((layers * dirs, batch, hidden)) * 0.5
    c0 = rng.standard_normal((layers * dirs, batch, hidden)) * 0.5
    masks = None
    if dropout:  # torch's masks at p = 0.25: entries 0 or 1/(1-p)
        masks = [
            (rng.random((steps, batch, dirs * hidden)) >= 0.25) / 0.75 for _ in range(layers - 1)
        ]
    y_shape = (batch, steps, dirs * hidden) if batch_first else (steps, batch, dirs * hidden)
    dy = rng.standard_normal(y_shape)
    dh_n = rng.standard_normal(h0.shape)
    dc_n = rng.standard_normal(c0.shape)
    kw: dict[str, Any] = dict(
        num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
        lengths=lengths, dropout_masks=masks,
    )  # fmt: skip

    def f() -> float:
        y, h_n, c_n, _ = ref.stack_forward(x, h0, c0, params, **kw)
        return float(np.sum(y * dy) + np.sum(h_n * dh_n) + np.sum(c_n * dc_n))

    y, h_n, _, ctx = ref.stack_forward(x, h0, c0, params, **kw)
    assert y.shape == y_shape and h_n.shape == h0.shape
    dx, dh0, dc0, grads = ref.stack_backward(ctx, dy, dh_n, dc_n)
    assert list(grads) == ref.param_names(layers, bidirectional)
    for name, analytic, arr in [("x", dx, x), ("h0", dh0, h0), ("c0", dc0, c0)] + [
        (k, grads[k], params[k]) for k in params
    ]:
        numeric = numeric_grad(f, arr)
        assert np.linalg.norm(numeric) > 0, name
        err = rel_err(analytic, numeric)
        assert err < FD_TOL, f"d{name}: relative error {err:.2e}"


def test_stack_of_one_layer_is_the_single_layer(rng: np.random.Generator) -> None:
    """Names, two biases summed, directions concatenated forward then reverse, h_n order."""
    p = make_problem(rng, 4, 3, 2, 5)
    params = make_stack_params(rng, 2, 5, 1, True)
    y, h_n, c_n, _ = ref.stack_forward(p.x, None, None, params, bidirectional=True)
    for d, sfx in enumerate(["", "_reverse"]):
        bias = params["bias_ih_l0" + sfx] + params["bias_hh_l0" + sfx]
        want = ref.lstm_forward(
            p.x, None, None, params["weight_ih_l0" + sfx], params["weight_hh_l0" + sfx], bias,
            reverse=d == 1,
        )  # fmt: skip
        np.testing.assert_allclose(y[:, :, d * 5 : (d + 1) * 5], want[0], rtol=1e-14)
        np.testing.assert_allclose(h_n[d], want[1], rtol=1e-14)
        np.testing.assert_allclose(c_n[d], want[2], rtol=1e-14)


def test_stack_is_its_layers_composed_with_dropout(rng: np.random.Generator) -> None:
    """Layer 1 reads layer 0's two directions concatenated, times the dropout mask."""
    steps, batch, hidden = 5, 3, 4
    x = rng.standard_normal((steps, batch, 2))
    lengths = make_lengths(rng, "mixed", steps, batch)
    params = make_stack_params(rng, 2, hidden, 2, True)
    mask = (rng.random((steps, batch, 2 * hidden)) >= 0.5) * 2.0
    y, h_n, c_n, _ = ref.stack_forward(
        x, None, None, params, num_layers=2, bidirectional=True, lengths=lengths,
        dropout_masks=[mask],
    )  # fmt: skip
    layer0 = {k: v for k, v in params.items() if "_l0" in k}
    layer1 = {k.replace("_l1", "_l0"): v for k, v in params.items() if "_l1" in k}
    y0, h0_n, c0_n, _ = ref.stack_forward(
        x, None, None, layer0, bidirectional=True, lengths=lengths
    )
    y1, h1_n, c1_n, _ = ref.stack_forward(
        y0 * mask, None, None, layer1, bidirectional=True, lengths=lengths
    )
    np.testing.assert_allclose(y, y1, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h_n, np.concatenate([h0_n, h1_n]), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(c_n, np.concatenate([c0_n, c1_n]), rtol=1e-14, atol=1e-15)
    assert not np.allclose(
        y,
        ref.stack_forward(x, None, None, params, num_layers=2, bidirectional=True, lengths=lengths)[
            0
        ],
    )


def test_sigmoid_is_stable_at_extremes() -> None:
    a = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    s = ref.sigmoid(a)
    assert np.all(np.isfinite(s))
    want = [0.0, 1.0 / (1.0 + np.exp(50.0)), 0.5, 1.0 / (1.0 + np.exp(-50.0)), 1.0]
    np.testing.assert_allclose(s, want, rtol=1e-15, atol=0)
