"""The core's reverse direction and variable lengths, and context reuse, against the reference.

The single-direction, equal-length reference is the oracle: a reverse pass equals a forward pass
over the time-flipped input, and a row of length L equals a forward pass over its own first L
steps, run alone. Tolerances as in test_ops: norm(a-b)/norm(b) <= 1e-10 (f64), 1e-5 (f32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import lstmcore
from helpers import Problem, make_problem, rel_err
from lstmcore import ops
from lstmcore import reference as ref
from lstmcore._native import core as _core

TOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
SHAPES = [(1, 1, 1, 1), (5, 4, 3, 7), (9, 17, 6, 33), (28, 128, 28, 128)]  # (T, B, I, H)


def oracle_row(
    p: Problem, b: int, length: int, reverse: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The reference's outputs (y (T, H) with zeros past the end, h_n, c_n) and gradients (dx
    (T, I) likewise, dh0, dc0, dw_ih, dw_hh, dbias) for row b alone, of the given length."""
    steps = p.x.shape[0]
    span = slice(length - 1, None, -1) if reverse else slice(0, length)
    x = p.x[span, b : b + 1]
    y, h_n, c_n, ctx = ref.lstm_forward(x, p.h0[b : b + 1], p.c0[b : b + 1], p.w_ih, p.w_hh, p.bias)
    dx, dh0, dc0, dw_ih, dw_hh, dbias = ref.lstm_backward(
        ctx, p.dy[span, b : b + 1], p.dh_n[b : b + 1], p.dc_n[b : b + 1]
    )
    y_full = np.zeros((steps, p.h0.shape[1]))
    dx_full = np.zeros((steps, p.x.shape[2]))
    y_full[span] = y[:, 0]
    dx_full[span] = dx[:, 0]
    return [y_full, h_n[0], c_n[0]], [dx_full, dh0[0], dc0[0], dw_ih, dw_hh, dbias]


def oracle(
    p: Problem, lengths: np.ndarray, reverse: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every row through oracle_row, stacked; weight gradients summed over the rows."""
    rows = [oracle_row(p, b, int(n), reverse) for b, n in enumerate(lengths)]
    outs = [np.stack([r[0][k] for r in rows], axis=1 if k == 0 else 0) for k in range(3)]
    grads = [np.stack([r[1][k] for r in rows], axis=1 if k == 0 else 0) for k in range(3)]
    grads += [sum(r[1][k] for r in rows) for k in range(3, 6)]
    return outs, grads


def run_core(
    p: Problem, lengths: np.ndarray | None, reverse: bool
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    y, h_n, c_n, ctx = ops.lstm_forward(*p.inputs(), reverse=reverse, lengths=lengths)
    return [y, h_n, c_n], list(ops.lstm_backward(ctx, *p.grads()))


def assert_close(got: list[np.ndarray], want: list[np.ndarray], dtype: Any) -> None:
    names = ["y", "h_n", "c_n"] if len(got) == 3 else ["dx", "dh0", "dc0", "dw_ih", "dw_hh", "db"]
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == dtype, name
        err = rel_err(a, b)
        assert err <= TOL[dtype], f"{name}: {err:.2e}"


@DTYPES
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_reverse_equals_forward_over_flipped_input(
    rng: np.random.Generator, shape: tuple[int, int, int, int], dtype: Any
) -> None:
    p = make_problem(rng, *shape, dtype=dtype)
    outs, grads = run_core(p, None, reverse=True)
    flipped = make_problem(rng, *shape, dtype=dtype)
    for name in ("h0", "c0", "w_ih", "w_hh", "bias", "dh_n", "dc_n"):
        setattr(flipped, name, getattr(p, name))
    flipped.x, flipped.dy = p.x[::-1].copy(), p.dy[::-1].copy()
    y, h_n, c_n, rctx = ref.lstm_forward(*flipped.inputs())
    dx, *rest = ref.lstm_backward(rctx, *flipped.grads())
    assert_close(outs, [y[::-1], h_n, c_n], dtype)
    assert_close(grads, [dx[::-1], *rest], dtype)


LENGTHS = {
    "mixed": lambda rng, t, b: rng.integers(1, t + 1, b),
    "all_one": lambda rng, t, b: np.ones(b, np.int64),
    "all_full": lambda rng, t, b: np.full(b, t),
    "sorted": lambda rng, t, b: np.sort(rng.integers(1, t + 1, b))[::-1].copy(),
}


@DTYPES
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("kind", sorted(LENGTHS))
@pytest.mark.parametrize("shape", [(1, 3, 2, 5), (6, 9, 4, 7), (13, 21, 5, 33)])
def test_lengths_match_each_row_run_alone(
    rng: np.random.Generator,
    shape: tuple[int, int, int, int],
    kind: str,
    reverse: bool,
    dtype: Any,
) -> None:
    p = make_problem(rng, *shape, dtype=dtype)
    lengths = LENGTHS[kind](rng, shape[0], shape[1])
    outs, grads = run_core(p, lengths, reverse)
    want_outs, want_grads = oracle(p, lengths, reverse)
    assert_close(outs, want_outs, dtype)
    assert_close(grads, want_grads, dtype)


def check_on_one_and_two_threads(p: Any, lengths: np.ndarray, reverse: bool) -> None:
    """The core with ``lengths`` on 1 and on 2 threads against the row-by-row oracle."""
    want_outs, want_grads = oracle(p, lengths, reverse=reverse)
    before = lstmcore.get_num_threads()
    try:
        for n in (1, 2):
            lstmcore.set_num_threads(n)
            outs, grads = run_core(p, lengths, reverse=reverse)
            assert_close(outs, want_outs, np.float32)
            assert_close(grads, want_grads, np.float32)
    finally:
        lstmcore.set_num_threads(before)


def test_lengths_at_the_mnist_shape_on_one_and_two_threads(rng: np.random.Generator) -> None:
    p = make_problem(rng, 28, 128, 28, 128, dtype=np.float32)
    check_on_one_and_two_threads(p, rng.integers(1, 29, 128), reverse=False)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_lengths_over_more_rows_than_one_chunk(rng: np.random.Generator, reverse: bool) -> None:
    """B = 270: each thread takes its rows in chunks of 128 (3 chunks on one thread, 2 each on
    two); the chunk boundaries fall inside the runs of sorted lengths."""
    p = make_problem(rng, 7, 270, 3, 9, dtype=np.float32)
    check_on_one_and_two_threads(p, rng.integers(1, 8, 270), reverse=reverse)


def test_dy_past_a_sequences_end_is_ignored(rng: np.random.Generator) -> None:
    p = make_problem(rng, 7, 5, 3, 6)
    lengths = np.array([7, 2, 5, 1, 3])
    _, grads = run_core(p, lengths, reverse=False)
    for b, n in enumerate(lengths):
        p.dy[n:, b] = rng.standard_normal(p.dy[n:, b].shape) * 1e3
    _, grads_noisy = run_core(p, lengths, reverse=False)
    for a, b in zip(grads, grads_noisy, strict=True):
        np.testing.assert_array_equal(a, b)


def test_y_is_zero_past_each_end_and_h_n_is_the_last_state(rng: np.random.Generator) -> None:
    p = make_problem(rng, 6, 4, 3, 5)
    lengths = np.array([2, 6, 1, 4])
    y, h_n, _, _ = ops.lstm_forward(*p.inputs(), lengths=lengths)
    for b, n in enumerate(lengths):
        assert not np.any(y[n:, b])
        np.testing.assert_array_equal(h_n[b], y[n - 1, b])


BAD_LENGTHS = [
    (np.array([0, 3, 3]), "values in \\[1, T=4\\]"),
    (np.array([5, 3, 3]), "values in \\[1, T=4\\]"),
    (np.array([-1, 3, 3]), "values in \\[1, T=4\\]"),
    (np.array([3, 3]), "shape \\(3,\\)"),
    (np.array([[3, 3, 3]]), "shape \\(3,\\)"),
    (np.array([3.0, 3.0, 3.0]), "integers"),
    (np.array([True, True, True]), "integers"),
    ("abc", "integers"),
]


@pytest.mark.parametrize(("lengths", "message"), BAD_LENGTHS)
def test_bad_lengths_name_the_argument(
    rng: np.random.Generator, lengths: Any, message: str
) -> None:
    p = make_problem(rng, 4, 3, 2, 5)
    with pytest.raises(ValueError, match=f"lengths: .*{message}"):
        ops.lstm_forward(*p.inputs(), lengths=lengths)


def test_lengths_may_be_a_list_of_python_ints(rng: np.random.Generator) -> None:
    p = make_problem(rng, 4, 3, 2, 5)
    y1, *_ = ops.lstm_forward(*p.inputs(), lengths=[4, 1, 3])  # type: ignore[arg-type]
    y2, *_ = ops.lstm_forward(*p.inputs(), lengths=np.array([4, 1, 3], np.int32))
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize(
    "sizes",
    [[2, 3, 1], [4, 2, 1], [2, 1, -1], [2, 2]],
    ids=["increasing", "above_B", "negative", "wrong_length"],
)
def test_core_rejects_bad_batch_sizes(rng: np.random.Generator, sizes: list[int]) -> None:
    p = make_problem(rng, 3, 3, 2, 5)
    with pytest.raises(ValueError, match="batch_sizes"):
        _core.forward(*p.inputs(), batch_sizes=np.array(sizes, np.int64))


@pytest.mark.parametrize("feature", [{"reverse": True}, {"lengths": np.array([1, 2])}])
def test_cuda_refuses_what_it_does_not_support(
    rng: np.random.Generator, feature: dict[str, Any]
) -> None:
    p = make_problem(rng, 2, 2, 2, 3, dtype=np.float32)
    with pytest.raises(ValueError, match=f"{next(iter(feature))}.*not supported on device"):
        ops.lstm_forward(*p.inputs(), device="cuda", **feature)


@DTYPES
def test_reuse_overwrites_the_old_context_and_matches_a_fresh_call(
    rng: np.random.Generator, dtype: Any
) -> None:
    first, second = (make_problem(rng, 5, 4, 3, 6, dtype=dtype) for _ in range(2))
    *_, ctx = ops.lstm_forward(*first.inputs())
    y, h_n, c_n, ctx2 = ops.lstm_forward(*second.inputs(), reuse=ctx, reverse=True)
    assert ctx2.native is ctx.native  # same shapes: the buffers were reused, not reallocated
    fresh_y, fresh_h, fresh_c, fresh_ctx = ops.lstm_forward(*second.inputs(), reverse=True)
    for a, b in ((y, fresh_y), (h_n, fresh_h), (c_n, fresh_c)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        ops.lstm_backward(ctx2, *second.grads()),
        ops.lstm_backward(fresh_ctx, *second.grads()),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_reuse_of_other_shapes_allocates_a_new_context(rng: np.random.Generator) -> None:
    small, big = make_problem(rng, 3, 2, 3, 4), make_problem(rng, 3, 5, 3, 4)
    *_, ctx = ops.lstm_forward(*small.inputs())
    *_, ctx2 = ops.lstm_forward(*big.inputs(), reuse=ctx)
    assert ctx2.native is not ctx.native
    assert ctx2.shape == (3, 5, 3, 4) and ctx.shape == (3, 2, 3, 4)


def test_need_y_false_returns_no_y_and_the_same_state_and_gradients(
    rng: np.random.Generator,
) -> None:
    p = make_problem(rng, 5, 4, 3, 6)
    lengths = np.array([5, 2, 4, 1])
    y, h_n, c_n, ctx = ops.lstm_forward(*p.inputs(), lengths=lengths)
    none_y, h_n2, c_n2, ctx2 = ops.lstm_forward(*p.inputs(), lengths=lengths, need_y=False)
    assert y is not None and none_y is None
    np.testing.assert_array_equal(h_n, h_n2)
    np.testing.assert_array_equal(c_n, c_n2)
    for a, b in zip(
        ops.lstm_backward(ctx, *p.grads()), ops.lstm_backward(ctx2, *p.grads()), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_inference_keeps_nothing_and_gives_the_same_results(
    rng: np.random.Generator, reverse: bool
) -> None:
    p = make_problem(rng, 6, 5, 3, 7, dtype=np.float32)
    lengths = np.array([6, 3, 1, 5, 2])
    trained = ops.lstm_forward(*p.inputs(), reverse=reverse, lengths=lengths)
    inferred = ops.lstm_forward(*p.inputs(), reverse=reverse, lengths=lengths, for_backward=False)
    for a, b in zip(trained[:3], inferred[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"ctx: .*need_cache=False"):
        ops.lstm_backward(inferred[3], *p.grads())
