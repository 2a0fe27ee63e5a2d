"""The reference's bf16 rule (``precision="bf16"``): round_bf16 against ml_dtypes and hand-picked
bit patterns; the rule's rounding points against an independent implementation and against
exact identities; its distance from the float64 reference; and precision=None unchanged.

Finite differences of the bf16 forward say nothing (rounding is piecewise constant): the bf16
gradients are checked as the rule defines them, float64 sums of rounded operands.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from helpers import Array, Problem, make_lengths, make_problem, make_stack_params, rel_err
from lstmcore import reference as ref

ml_dtypes = pytest.importorskip("ml_dtypes")

U = 2.0**-8  # bf16's unit roundoff: 8 significant bits, round to nearest
NAMES = ("y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias")

# The bf16 reference against the float64 one, norm-wise relative error in units of U.
#
# One rounding has relative error |d| <= U; with the absolute error uniform over the last place
# and the mantissa log-uniform, rms(d) = U/sqrt(3) * sqrt(E[1/m^2]) = 0.42 U. A product of two
# rounded operands carries d_a + d_b: rms 0.6 U. A GEMM output s = sum_k t_k over K terms:
# worst case |e| <= 2U sum|t_k|, which against a typical |s| ~ sqrt(K) rms(t) for random signs
# is the pessimistic c U sqrt(K) (c ~ 1.6); but the errors are independent and zero-mean, so
# they add in quadrature, |e| ~ 0.6 U sqrt(sum t_k^2) ~ 0.6 U |s|: K cancels, and over N
# outputs the norm-wise error concentrates on ~0.6 U with a spread ~ 1/sqrt(N) (a ratio of two
# chi-squares). Measured, K = 8..156, T = 1..784: dx, dh0, dw_ih, dw_hh 0.55-0.75 U ("gemm").
# The cell passes the pre-activation error on with gains below 1 (sigmoid' <= 1/4, tanh' <=
# 1) and the forget gate damps it step by step, so it reaches a steady state instead of
# compounding over T: y, h_n, c_n 0.3-0.6 U ("state"), the same at T = 784. dc0 and dbias get
# rounding only through the forward's values and dh (they are float32 sums of unrounded
# terms): 0.1-0.35 U ("sum").
#
# A problem with a handful of outputs has a heavy tail: its outputs can cancel to near zero and
# no bound relative to their norm holds (dx of a T = B = I = 1 problem is one sum of 4H terms:
# measured up to 1400 U over 2000 problems; its median 0.6 U, a Cauchy ratio). So small shapes
# (every quantity at least 7 elements) assert the median over SMALL_DRAWS fresh problems, and
# the large shapes each problem; those tiny cases are pinned exactly by the identity tests.
# Bounds: the largest measured median of 9 over 300 x 7 small cases (state 0.92, gemm 1.22,
# sum 0.53) and the large shapes' worst (MNIST rows: state 0.61, gemm 0.74, sum 0.22; T = 784:
# 0.46, 0.76, 0.19), times about 1.3.
SMALL_DRAWS = 9
SMALL_BOUND = {"state": 1.25, "gemm": 1.6, "sum": 0.7}
LARGE_BOUND = {"state": 0.8, "gemm": 0.95, "sum": 0.35}
KIND = {
    "y": "state", "h_n": "state", "c_n": "state", "dx": "gemm", "dh0": "gemm", "dc0": "sum",
    "dw_ih": "gemm", "dw_hh": "gemm", "dbias": "sum",
}  # fmt: skip

# the reference against the independent implementation below: the same rule and the same
# float32 cell arithmetic, but bf16 rounding through ml_dtypes, one [x | h] GEMM and per-step
# weight-gradient sums, so the float64 sums differ in their last bits; measured: bit for bit
# equal in every case here, MNIST rows included. The bound leaves room for another BLAS moving
# a float32 rounding by an ulp. A rounding point missing or added moves the quantities it
# feeds by 0.2-0.45 U (measured at MNIST rows: h not rounded, dh0 0.36 U; dgates not rounded
# in the recurrence, dh0 0.43 U; dbias from rounded dgates 0.25 U; y rounded 0.43 U).
SAME_RULE = 1e-6
KERNEL_LIKE = 0.1  # in units of U: see test_bf16_reference_is_stable_under_ulp_changes


def bits(values: list[int]) -> Array:
    return np.array(values, dtype=np.uint32).view(np.float32)


def to_bits(a: Array) -> list[int]:
    return [int(b) for b in np.asarray(a, np.float32).view(np.uint32)]


# ---- round_bf16 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "want"),
    [
        (0x3F808000, 0x3F800000),  # a tie, kept bit even: down
        (0x3F818000, 0x3F820000),  # a tie, kept bit odd: up to even
        (0xBF808000, 0xBF800000),  # the same, negative
        (0xBF818000, 0xBF820000),
        (0x3F807FFF, 0x3F800000),  # just below half: down
        (0x3F808001, 0x3F810000),  # just above half: up
        (0x3FFFFFFF, 0x40000000),  # the carry runs into the exponent
        (0x7F7F7FFF, 0x7F7F0000),  # the largest value that stays finite
        (0x7F7F8000, 0x7F800000),  # a tie above the largest finite bf16 (odd): inf
        (0x7F7FFFFF, 0x7F800000),  # float32's largest finite value: inf
        (0xFF7FFFFF, 0xFF800000),  # and -inf
        (0x7F800000, 0x7F800000),  # +-inf stay
        (0xFF800000, 0xFF800000),
        (0x00000000, 0x00000000),
        (0x80000000, 0x80000000),  # -0.0 keeps its sign
        (0x00000001, 0x00000000),  # the smallest denormal: to +0
        (0x80000001, 0x80000000),  # to -0
        (0x00008000, 0x00000000),  # a denormal tie, even: down
        (0x00018000, 0x00020000),  # a denormal tie, odd: up (rounded exactly, not flushed)
        (0x007FFFFF, 0x00800000),  # the largest denormal rounds up to the smallest normal
        (0x7F800001, 0x7FC00000),  # signalling NaN: quiet, truncated
        (0xFF800001, 0xFFC00000),  # its sign kept
        (0x7FC12345, 0x7FC10000),  # a quiet NaN keeps its top payload
        (0x7FFFFFFF, 0x7FFF0000),  # the largest pattern: no wrap in the add
        (0xFFFFFFFF, 0xFFFF0000),
    ],
    ids=lambda v: f"{v:08X}",
)
def test_round_bf16_bit_patterns(given: int, want: int) -> None:
    out = ref.round_bf16(bits([given]))
    assert out.dtype == np.float32
    assert to_bits(out) == [want], f"{given:08X} -> {to_bits(out)[0]:08X}, want {want:08X}"


def test_round_bf16_matches_ml_dtypes(rng: np.random.Generator) -> None:
    """Random bit patterns over the whole float32 range, and every low half under the high
    halves where rounding is delicate (denormals, 1.0, the overflow edge, inf/NaN)."""
    highs = [0x0000, 0x0001, 0x007F, 0x0080, 0x3F80, 0x3F81, 0x7F7E, 0x7F7F, 0x7F80, 0x7FC0]
    highs += [h | 0x8000 for h in highs]
    low = np.arange(1 << 16, dtype=np.uint32)
    patterns = np.concatenate(
        [rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)]
        + [(np.uint32(h) << 16) | low for h in highs]
    )
    values = patterns.view(np.float32)
    got = ref.round_bf16(values)
    nan = np.isnan(values)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns on NaN inputs
        want = values.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert nan.sum() > 1000 and (~nan).sum() > 1_000_000
    np.testing.assert_array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.all(np.isnan(got[nan]))
    # quiet bit set, sign and the top 7 payload bits kept, as vcvtneps2bf16
    np.testing.assert_array_equal(
        got[nan].view(np.uint32), (patterns[nan] & 0xFFFF0000) | 0x00400000
    )


def test_round_bf16_shapes_and_dtype(rng: np.random.Generator) -> None:
    a = rng.standard_normal((3, 4, 5)).astype(np.float32)
    kept = a.copy()
    strided = a[:, ::-2, 1:]  # not contiguous
    out = ref.round_bf16(strided)
    assert out.shape == strided.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref.round_bf16(np.ascontiguousarray(strided)))
    np.testing.assert_array_equal(a, kept)  # input not written
    np.testing.assert_array_equal(ref.round_bf16(out), out)  # idempotent
    assert np.all(out.view(np.uint32) & 0xFFFF == 0)
    assert np.all(np.abs(out - strided) <= U * np.abs(strided))
    assert np.any(out != strided)
    zero_d = ref.round_bf16(np.float32(1.00390625 + 2**-10))
    assert zero_d.shape == () and float(zero_d) == 1.0078125
    assert ref.round_bf16(np.zeros((0, 3), np.float32)).shape == (0, 3)
    with pytest.raises(ValueError, match="float32"):
        ref.round_bf16(a.astype(np.float64))


# ---- the rule's rounding points, exactly ----------------------------------------------------


def bf16(a: Array) -> Array:
    """Rounded through ml_dtypes (independent of ref.round_bf16), held exactly in float64."""
    return np.asarray(a, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def f32(a: Array) -> Array:
    return np.asarray(a).astype(np.float32)


def sigmoid_split(a: Array) -> Array:
    """The reference's sigmoid, written as one expression: the same float32 roundings."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, np.float32(1) / (np.float32(1) + e), e / (np.float32(1) + e))


def sigmoid_plain(a: Array) -> Array:
    """1 / (1 + exp(-a)): a kernel's way, off the reference's by a float32 ulp for a < 0."""
    with np.errstate(over="ignore"):  # exp(-a) -> inf for very negative a: sigmoid 0
        return np.float32(1) / (np.float32(1) + np.exp(-a))


def rule_forward_backward(
    p: Problem, lengths: Array | None, reverse: bool, sigmoid: Any = sigmoid_split
) -> tuple[Array, ...]:
    """The bf16 rule written from its statement, rounding through ml_dtypes: one GEMM over
    [x_t | h_{t-1}] and [w_ih | w_hh]; weight gradients summed step by step (float64) and
    rounded at the end; the cell's float32 arithmetic in the reference's order."""
    steps, batch, _ = p.x.shape
    hidden = p.w_hh.shape[1]
    run = (
        np.ones((steps, batch), bool)
        if lengths is None
        else np.arange(steps)[:, None] < np.asarray(lengths)[None, :]
    )
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    w = bf16(np.concatenate([p.w_ih, p.w_hh], axis=1))  # (4H, I + H)
    h, c = p.h0.copy(), p.c0.copy()
    y = np.zeros((steps, batch, hidden), np.float32)
    saved: dict[int, tuple[Array, ...]] = {}
    for t in order:
        a = f32(np.concatenate([bf16(p.x[t]), bf16(h)], axis=1) @ w.T) + p.bias
        i, f, o = (sigmoid(a[:, k * hidden : (k + 1) * hidden]) for k in (0, 1, 3))
        g = np.tanh(a[:, 2 * hidden : 3 * hidden])
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        saved[t] = (h, c, i, f, g, o, np.tanh(c_new))
        m = run[t][:, None]
        y[t] = np.where(m, h_new, np.float32(0))
        h, c = np.where(m, h_new, h), np.where(m, c_new, c)
    h_n, c_n = h, c
    dh, dc = p.dh_n.copy(), p.dc_n.copy()
    dx = np.zeros(p.x.shape, np.float32)
    dw_ih, dw_hh = np.zeros(p.w_ih.shape), np.zeros(p.w_hh.shape)
    dbias = np.zeros(p.bias.shape)
    one = np.float32(1)
    for t in reversed(order):
        h_prev, c_prev, i, f, g, o, tc = saved[t]
        m = run[t][:, None]
        dh_t = dh + np.where(m, p.dy[t], np.float32(0))
        dc_t = dc + dh_t * o * (one - tc**2)
        dg = np.concatenate(
            [dc_t * g * i * (one - i), dc_t * c_prev * f * (one - f), dc_t * i * (one - g**2),
             dh_t * tc * o * (one - o)],
            axis=1,
        )  # fmt: skip
        dg = np.where(m, dg, np.float32(0))
        dgr = bf16(dg)
        dh = np.where(m, f32(dgr @ bf16(p.w_hh)), dh)
        dc = np.where(m, dc_t * f, dc)
        dx[t] = f32(dgr @ bf16(p.w_ih))
        dw_ih += dgr.T @ bf16(p.x[t])
        dw_hh += dgr.T @ bf16(h_prev)
        dbias += dg.astype(np.float64).sum(axis=0)
    return y, h_n, c_n, dx, dh, dc, f32(dw_ih), f32(dw_hh), f32(dbias)


def bf16_run(p: Problem, **kw: Any) -> tuple[Array, ...]:
    y, h_n, c_n, ctx = ref.lstm_forward(*p.inputs(), precision="bf16", **kw)
    assert ctx.precision == "bf16"
    return (y, h_n, c_n, *ref.lstm_backward(ctx, *p.grads()))


RULE_CASES = [
    ((1, 1, 7, 7), "none", False),
    ((1, 1, 1, 33), "none", True),
    ((1, 16, 3, 33), "none", False),
    ((6, 1, 2, 7), "none", True),
    ((5, 3, 4, 7), "mixed", True),
    ((7, 5, 3, 33), "mixed", False),
    ((4, 4, 2, 7), "ones", True),
    ((28, 128, 28, 128), "none", False),
]


@pytest.mark.parametrize(
    ("shape", "lengths_kind", "reverse"),
    RULE_CASES,
    ids=[f"T{s[0]}B{s[1]}I{s[2]}H{s[3]}-{k}-{'rev' if r else 'fwd'}" for s, k, r in RULE_CASES],
)
def test_bf16_reference_is_the_rule(
    rng: np.random.Generator, shape: tuple[int, int, int, int], lengths_kind: str, reverse: bool
) -> None:
    """Forward and every gradient equal the rule written independently (to ulps of float32);
    all results float32, and y, h_n, c_n and the gradients not themselves rounded."""
    p = make_problem(rng, *shape, dtype=np.float32, scale=2.0)
    lengths = make_lengths(rng, lengths_kind, shape[0], shape[1])
    got = bf16_run(p, reverse=reverse, lengths=lengths)
    want = rule_forward_backward(p, lengths, reverse)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert a.dtype == np.float32, name
        assert np.linalg.norm(b) > 0, name
        err = rel_err(a, b)
        assert err < SAME_RULE, f"{name}: relative error {err:.2e} from the rule"
    for name, a in zip(NAMES, got, strict=True):
        if a.size >= 8:  # results stay float32: some element is off the bf16 grid
            assert np.any(ref.round_bf16(a) != a), name


def test_bf16_reference_is_stable_under_ulp_changes(rng: np.random.Generator) -> None:
    """What a kernel can be held to: the same rule with the cell's float32 arithmetic off by
    an ulp here and there (another sigmoid, as FMA or another tanh would do). The bf16
    roundings of h and dgates turn ulps into bf16 steps now and then, and those spread, but
    the forget gate damps them: measured at MNIST rows 0.002 U (y, h_n, c_n) and 0.035 U
    (gradients), the same at T = 100 and 784; bound KERNEL_LIKE, far below the 0.6 U that
    bf16 is from float64, and below the 0.2-0.45 U a missing rounding point costs the quantity
    it feeds (see SAME_RULE): a fast path held to this still has its rounding points pinned."""
    p = make_problem(rng, 28, 128, 28, 128, dtype=np.float32)
    lengths = make_lengths(rng, "mixed", 28, 128)
    got = bf16_run(p, lengths=lengths)
    want = rule_forward_backward(p, lengths, False, sigmoid=sigmoid_plain)
    for name, a, b in zip(NAMES, got, want, strict=True):
        err = rel_err(a, b) / U
        assert err < KERNEL_LIKE, f"{name}: {err:.3f} U from the ulp-changed rule"


@pytest.mark.parametrize(("inp", "hidden"), [(7, 7), (3, 33), (1, 7)])
def test_bf16_gradients_are_float64_products_of_rounded_operands(
    rng: np.random.Generator, inp: int, hidden: int
) -> None:
    """T = B = 1: dbias is the step's dgates itself, so every GEMM the backward runs can be
    redone here from the rounded operands: dw_ih = bf16(dgates)^T bf16(x) and dw_hh =
    bf16(dgates)^T bf16(h0) (one exact product each: bit for bit), dx = bf16(dgates) bf16(w_ih)
    and dh0 = bf16(dgates) bf16(w_hh) (float64 sums rounded to float32: within one ulp)."""
    p = make_problem(rng, 1, 1, inp, hidden, dtype=np.float32, scale=2.0)
    _, _, _, ctx = ref.lstm_forward(*p.inputs(), precision="bf16")
    dx, dh0, _, dw_ih, dw_hh, dbias = ref.lstm_backward(ctx, *p.grads())
    dgates = dbias[None, :]  # (1, 4H), unrounded float32
    assert np.any(ref.round_bf16(dgates) != dgates)  # so rounding it or not is visible
    np.testing.assert_array_equal(dw_ih, f32(bf16(dgates).T @ bf16(p.x[0])))
    np.testing.assert_array_equal(dw_hh, f32(bf16(dgates).T @ bf16(p.h0)))
    np.testing.assert_allclose(dx[0], f32(bf16(dgates) @ bf16(p.w_ih)), rtol=2**-22, atol=0)
    np.testing.assert_allclose(dh0, f32(bf16(dgates) @ bf16(p.w_hh)), rtol=2**-22, atol=0)
    # and the forward's pre-activations from the rounded x, h0 and weights
    a = f32(bf16(p.x[0]) @ bf16(p.w_ih).T + bf16(p.h0) @ bf16(p.w_hh).T) + p.bias
    i, f, g, _ = np.split(ctx.gates[0], 4, axis=1)
    np.testing.assert_allclose(np.tanh(a[:, 2 * hidden : 3 * hidden]), g, rtol=2**-21, atol=0)
    np.testing.assert_allclose(ctx.c_out[0], f * p.c0 + i * g, rtol=0, atol=0)


# ---- the bf16 reference against the float64 one --------------------------------------------


def bf16_errors(p: Problem, **kw: Any) -> dict[str, float]:
    """Norm-wise relative errors of the bf16 reference from the float64 one, in units of U."""
    got = bf16_run(p, **kw)
    y, h_n, c_n, ctx = ref.lstm_forward(*p.inputs(), **kw)
    want = (y, h_n, c_n, *ref.lstm_backward(ctx, *p.grads()))
    return {n: rel_err(a, b) / U for n, a, b in zip(NAMES, got, want, strict=True)}


SMALL_CASES = [
    ((1, 1, 7, 7), "none", False),
    ((1, 16, 3, 33), "none", True),
    ((5, 3, 4, 7), "mixed", True),
    ((7, 2, 5, 33), "mixed", False),
    ((7, 2, 5, 33), "ones", True),
    ((50, 1, 1, 7), "none", True),
]


@pytest.mark.parametrize(
    ("shape", "lengths_kind", "reverse"),
    SMALL_CASES,
    ids=[f"T{s[0]}B{s[1]}I{s[2]}H{s[3]}-{k}-{'rev' if r else 'fwd'}" for s, k, r in SMALL_CASES],
)
def test_bf16_is_within_rounding_of_float64_small(
    rng: np.random.Generator, shape: tuple[int, int, int, int], lengths_kind: str, reverse: bool
) -> None:
    draws = []
    for _ in range(SMALL_DRAWS):
        p = make_problem(rng, *shape, dtype=np.float32)
        lengths = make_lengths(rng, lengths_kind, shape[0], shape[1])
        draws.append(bf16_errors(p, reverse=reverse, lengths=lengths))
    for name in NAMES:
        median = float(np.median([d[name] for d in draws]))
        bound = SMALL_BOUND[KIND[name]]
        assert 0 < median < bound, f"{name}: median error {median:.2f} U, bound {bound} U"


@pytest.mark.parametrize(
    ("shape", "lengths_kind"),
    [((28, 128, 28, 128), "mixed"), ((784, 2, 1, 128), "none")],
    ids=["mnist-rows-mixed", "pixels-T784"],
)
def test_bf16_is_within_rounding_of_float64_large(
    rng: np.random.Generator, shape: tuple[int, int, int, int], lengths_kind: str
) -> None:
    p = make_problem(rng, *shape, dtype=np.float32)
    errors = bf16_errors(p, lengths=make_lengths(rng, lengths_kind, shape[0], shape[1]))
    for name, err in errors.items():
        bound = LARGE_BOUND[KIND[name]]
        assert 0 < err < bound, f"{name}: error {err:.2f} U, bound {bound} U"


# ---- the stack ------------------------------------------------------------------------------


def test_bf16_stack_is_its_layers_composed(rng: np.random.Generator) -> None:
    """Two bidirectional layers, lengths, dropout, batch_first: each layer is lstm_forward
    under bf16 on the float32 output of the one below (biases summed in float32, the float64
    mask taken as float32), bit for bit, forward and backward."""
    steps, batch, inp, hidden = 6, 4, 5, 7
    params = make_stack_params(rng, inp, hidden, 2, True, dtype=np.float32)
    x = rng.standard_normal((batch, steps, inp)).astype(np.float32)
    lengths = make_lengths(rng, "mixed", steps, batch)
    mask = (rng.random((steps, batch, 2 * hidden)) >= 0.25) / 0.75  # float64, taken as float32
    dy = rng.standard_normal((batch, steps, 2 * hidden)).astype(np.float32)
    dh_n = rng.standard_normal((4, batch, hidden)).astype(np.float32)
    kw: dict[str, Any] = dict(
        num_layers=2, bidirectional=True, batch_first=True, lengths=lengths, dropout_masks=[mask]
    )
    y, h_n, c_n, ctx = ref.stack_forward(x, None, None, params, precision="bf16", **kw)
    assert ctx.precision == "bf16" and y.dtype == h_n.dtype == c_n.dtype == np.float32
    dx, _, dc0, grads = ref.stack_backward(ctx, dy, dh_n, None)

    inp_t = x.transpose(1, 0, 2)
    ctxs, outs = [], []
    for layer in range(2):
        ys = []
        for d, sfx in enumerate([f"_l{layer}", f"_l{layer}_reverse"]):
            bias = params["bias_ih" + sfx] + params["bias_hh" + sfx]
            y_d, h_d, _, c = ref.lstm_forward(
                inp_t, None, None, params["weight_ih" + sfx], params["weight_hh" + sfx], bias,
                reverse=d == 1, lengths=lengths, precision="bf16",
            )  # fmt: skip
            np.testing.assert_array_equal(h_n[2 * layer + d], h_d)
            ys.append(y_d)
            ctxs.append(c)
        outs.append(np.concatenate(ys, axis=2))
        inp_t = outs[-1] * mask.astype(np.float32)
    np.testing.assert_array_equal(y, outs[1].transpose(1, 0, 2))
    # backward, top layer first
    dys = dy.transpose(1, 0, 2)
    for layer in (1, 0):
        if layer == 0:
            dys = dys * mask.astype(np.float32)
        parts = [
            ref.lstm_backward(
                ctxs[2 * layer + d], dys[:, :, d * hidden : (d + 1) * hidden], dh_n[2 * layer + d],
                None,
            )
            for d in range(2)
        ]  # fmt: skip
        for d, sfx in enumerate([f"_l{layer}", f"_l{layer}_reverse"]):
            np.testing.assert_array_equal(grads["weight_ih" + sfx], parts[d][3])
            np.testing.assert_array_equal(grads["weight_hh" + sfx], parts[d][4])
            np.testing.assert_array_equal(grads["bias_hh" + sfx], parts[d][5])
            np.testing.assert_array_equal(dc0[2 * layer + d], parts[d][2])
        dys = parts[0][0] + parts[1][0]
    np.testing.assert_array_equal(dx, dys.transpose(1, 0, 2))


def stack_kind(name: str) -> str:
    """A stack gradient's error kind: a bias of a lower layer gets its dgates from the GEMM
    output dx of the layer above, so it carries that error ("state"-sized), not "sum"."""
    if name.startswith("bias"):
        return "sum" if "_l1" in name else "state"
    return "state" if name == "y" else "gemm"


def test_bf16_stack_is_within_rounding_of_float64(rng: np.random.Generator) -> None:
    """Median over SMALL_DRAWS problems, as the small single-layer cases (measured largest
    median of 9 over 111 groups: y 0.35 U, dx and weights 1.07 U, top biases 0.22 U, lower
    biases 0.65 U)."""
    steps, batch, inp, hidden = 6, 4, 5, 7
    draws: list[dict[str, float]] = []
    for _ in range(SMALL_DRAWS):
        params = make_stack_params(rng, inp, hidden, 2, True, dtype=np.float32)
        x = rng.standard_normal((batch, steps, inp)).astype(np.float32)
        mask = (rng.random((steps, batch, 2 * hidden)) >= 0.25) / 0.75
        dy = rng.standard_normal((batch, steps, 2 * hidden)).astype(np.float32)
        dh_n = rng.standard_normal((4, batch, hidden)).astype(np.float32)
        kw: dict[str, Any] = dict(
            num_layers=2, bidirectional=True, batch_first=True, dropout_masks=[mask],
            lengths=make_lengths(rng, "mixed", steps, batch),
        )  # fmt: skip
        y, _, _, ctx = ref.stack_forward(x, None, None, params, precision="bf16", **kw)
        dx, _, _, grads = ref.stack_backward(ctx, dy, dh_n, None)
        y64, _, _, ctx64 = ref.stack_forward(x, None, None, params, **kw)
        dx64, _, _, grads64 = ref.stack_backward(ctx64, dy, dh_n, None)
        pairs = [("y", y, y64), ("dx", dx, dx64)] + [(k, grads[k], grads64[k]) for k in grads]
        draws.append({name: rel_err(a, b) / U for name, a, b in pairs})
    for name in draws[0]:
        median = float(np.median([d[name] for d in draws]))
        bound = SMALL_BOUND[stack_kind(name)]
        assert 0 < median < bound, f"{name}: median error {median:.2f} U, bound {bound} U"


# ---- precision=None and "fp32": the old path, bit for bit -----------------------------------


def old_sigmoid(a: Array) -> Array:
    out = np.empty_like(a)
    pos = a >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-a[pos]))
    e = np.exp(a[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def old_forward_backward(p: Problem, lengths: Array | None, reverse: bool) -> tuple[Array, ...]:
    """The reference's lstm_forward and lstm_backward before precision existed, verbatim in
    their arithmetic (float64 throughout)."""
    x, w_ih, w_hh, bias = (np.asarray(a, np.float64) for a in (p.x, p.w_ih, p.w_hh, p.bias))
    steps, batch, inp = x.shape
    hidden = w_hh.shape[1]
    active = (
        np.ones((steps, batch), bool)
        if lengths is None
        else np.arange(steps)[:, None] < np.asarray(lengths, np.int64)[None, :]
    )
    order = list(reversed(range(steps))) if reverse else list(range(steps))
    h, c = np.asarray(p.h0, np.float64), np.asarray(p.c0, np.float64)
    y = np.zeros((steps, batch, hidden))
    h_in, c_in, c_out = np.zeros_like(y), np.zeros_like(y), np.zeros_like(y)
    gates = np.zeros((steps, batch, 4 * hidden))
    for t in order:
        a = x[t] @ w_ih.T + h @ w_hh.T + bias
        i = old_sigmoid(a[:, 0 * hidden : 1 * hidden])
        f = old_sigmoid(a[:, 1 * hidden : 2 * hidden])
        g = np.tanh(a[:, 2 * hidden : 3 * hidden])
        o = old_sigmoid(a[:, 3 * hidden : 4 * hidden])
        h_in[t], c_in[t] = h, c
        c_out[t] = f * c + i * g
        gates[t] = np.concatenate([i, f, g, o], axis=1)
        h_new = o * np.tanh(c_out[t])
        run = active[t][:, None]
        y[t] = np.where(run, h_new, 0.0)
        h = np.where(run, h_new, h)
        c = np.where(run, c_out[t], c)
    h_n, c_n = h, c
    dy = np.asarray(p.dy, np.float64)
    dh = np.asarray(p.dh_n, np.float64).copy()
    dc = np.asarray(p.dc_n, np.float64).copy()
    da = np.zeros((steps, batch, 4 * hidden))
    for t in reversed(order):
        run = active[t][:, None]
        i, f, g, o = np.split(gates[t], 4, axis=1)
        tanh_c = np.tanh(c_out[t])
        dh_t = dh + np.where(run, dy[t], 0.0)
        dc_t = dc + dh_t * o * (1.0 - tanh_c**2)
        da_t = np.concatenate(
            [dc_t * g * i * (1.0 - i), dc_t * c_in[t] * f * (1.0 - f), dc_t * i * (1.0 - g**2),
             dh_t * tanh_c * o * (1.0 - o)],
            axis=1,
        )  # fmt: skip
        da[t] = np.where(run, da_t, 0.0)
        dc = np.where(run, dc_t * f, dc)
        dh = np.where(run, da[t] @ w_hh, dh)
    rows = da.reshape(steps * batch, 4 * hidden)
    dw_ih = rows.T @ x.reshape(steps * batch, inp)
    dw_hh = rows.T @ h_in.reshape(steps * batch, hidden)
    return y, h_n, c_n, da @ w_ih, dh, dc, dw_ih, dw_hh, rows.sum(axis=0)


NONE_CASES = [
    (shape, dtype, lengths_kind, reverse, precision)
    for shape, dtype, lengths_kind, reverse in [
        ((1, 1, 1, 7), np.float64, "none", False),
        ((5, 3, 4, 33), np.float32, "mixed", True),
        ((5, 3, 4, 7), np.float64, "mixed", False),
    ]
    for precision in (None, "fp32", "omitted")
] + [((28, 128, 28, 128), np.float32, "none", False, "fp32")]


@pytest.mark.parametrize(
    ("shape", "dtype", "lengths_kind", "reverse", "precision"),
    NONE_CASES,
    ids=[f"T{s[0]}B{s[1]}H{s[3]}-{np.dtype(d).name}-{k}-{'rev' if r else 'fwd'}-{pr}"
         for s, d, k, r, pr in NONE_CASES],
)  # fmt: skip
def test_precision_none_is_the_old_path_bit_for_bit(
    rng: np.random.Generator,
    shape: tuple[int, int, int, int],
    dtype: Any,
    lengths_kind: str,
    reverse: bool,
    precision: str | None,
) -> None:
    p = make_problem(rng, *shape, dtype=dtype)
    lengths = make_lengths(rng, lengths_kind, shape[0], shape[1])
    kw: dict[str, Any] = {"reverse": reverse, "lengths": lengths}
    if precision != "omitted":
        kw["precision"] = precision
    y, h_n, c_n, ctx = ref.lstm_forward(*p.inputs(), **kw)
    assert ctx.precision is None
    back_kw = {} if precision == "omitted" else {"precision": precision}
    got = (y, h_n, c_n, *ref.lstm_backward(ctx, *p.grads(), **back_kw))
    for name, a, b in zip(NAMES, got, old_forward_backward(p, lengths, reverse), strict=True):
        assert a.dtype == np.float64, name
        assert a.tobytes() == b.tobytes(), f"{name} changed"


def test_stack_precision_none_and_fp32_agree_bit_for_bit(rng: np.random.Generator) -> None:
    params = make_stack_params(rng, 3, 5, 2, True, dtype=np.float32)
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    lengths = make_lengths(rng, "mixed", 6, 4)
    mask = (rng.random((6, 4, 10)) >= 0.25) / 0.75
    dy = rng.standard_normal((6, 4, 10))
    kw: dict[str, Any] = dict(num_layers=2, bidirectional=True, lengths=lengths)
    results = []
    for extra in [{}, {"precision": None}, {"precision": "fp32"}]:
        y2, h_n2, c_n2, ctx2 = ref.stack_forward(
            x, None, None, params, dropout_masks=[mask], **kw, **extra
        )
        assert ctx2.precision is None and y2.dtype == np.float64
        dx, dh0, dc0, grads = ref.stack_backward(ctx2, dy, None, None, **extra)
        results.append([y2, h_n2, c_n2, dx, dh0, dc0, *grads.values()])
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a.tobytes() == b.tobytes()


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("arg", ["x", "h0", "c0", "w_ih", "w_hh", "bias"])
def test_bf16_refuses_float64_naming_precision(rng: np.random.Generator, arg: str) -> None:
    p = make_problem(rng, 3, 2, 4, 5, dtype=np.float32)
    args = dict(zip(["x", "h0", "c0", "w_ih", "w_hh", "bias"], p.inputs(), strict=True))
    args[arg] = args[arg].astype(np.float64)
    with pytest.raises(ValueError, match=rf"precision.*{arg} is float64"):
        ref.lstm_forward(*args.values(), precision="bf16")
    ref.lstm_forward(*args.values(), precision="fp32")  # the arrays' own dtype: accepted


@pytest.mark.parametrize("arg", ["x", "h0", "weight_hh_l0", "bias_ih_l0"])
def test_bf16_stack_refuses_float64_naming_precision(rng: np.random.Generator, arg: str) -> None:
    args: dict[str, Any] = {
        "x": rng.standard_normal((3, 2, 4)).astype(np.float32),
        "h0": rng.standard_normal((1, 2, 5)).astype(np.float32),
    }
    params = make_stack_params(rng, 4, 5, 1, False, dtype=np.float32)
    if arg in args:
        args[arg] = args[arg].astype(np.float64)
    else:
        params[arg] = params[arg].astype(np.float64)
    with pytest.raises(ValueError, match=rf"precision.*{arg} is float64"):
        ref.stack_forward(args["x"], args["h0"], None, params, precision="bf16")
    ref.stack_forward(args["x"], args["h0"], None, params)


def test_bf16_backward_refuses_float64_gradients(rng: np.random.Generator) -> None:
    p = make_problem(rng, 3, 2, 4, 5, dtype=np.float32)
    _, _, _, ctx = ref.lstm_forward(*p.inputs(), precision="bf16")
    for k in range(3):
        grads: list[Array | None] = [None, None, None]
        grads[k] = p.grads()[k].astype(np.float64)
        with pytest.raises(ValueError, match="precision"):
            ref.lstm_backward(ctx, *grads)
    ref.lstm_backward(ctx, None, None, None)


@pytest.mark.parametrize("bad", ["bf8", "BF16", "fp16", "", "float32", 16, True])
def test_unknown_precision_raises_naming_the_allowed_values(bad: Any) -> None:
    x = np.zeros((2, 1, 3), np.float32)
    w = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"precision: expected one of None, 'fp32', 'bf16'"):
        ref.lstm_forward(x, None, None, w, w[:, :1], np.zeros(4, np.float32), precision=bad)
    with pytest.raises(ValueError, match=r"precision: expected one of None, 'fp32', 'bf16'"):
        ref.stack_forward(x, None, None, {}, precision=bad)


def test_backward_follows_the_forwards_precision(rng: np.random.Generator) -> None:
    p = make_problem(rng, 3, 2, 4, 5, dtype=np.float32)
    _, _, _, ctx16 = ref.lstm_forward(*p.inputs(), precision="bf16")
    _, _, _, ctx32 = ref.lstm_forward(*p.inputs(), precision="fp32")
    for ctx, wrong in [(ctx16, "fp32"), (ctx32, "bf16")]:
        with pytest.raises(ValueError, match="precision"):
            ref.lstm_backward(ctx, *p.grads(), precision=wrong)
    ref.lstm_backward(ctx16, *p.grads(), precision="bf16")
    params = make_stack_params(rng, 4, 5, 1, False, dtype=np.float32)
    _, _, _, sctx = ref.stack_forward(p.x, None, None, params, precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        ref.stack_backward(sctx, None, None, None, precision="fp32")
