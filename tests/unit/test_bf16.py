"""precision="bf16": every bf16 path this CPU runs against the bf16 reference.

The bf16 rule (lstm.h, lstmcore.reference): GEMM operands rounded to bfloat16 (x, h_{t-1}, the
weights; in backward the gate gradients), float32 accumulation, float32 everywhere else.

Tolerances. The kernel and the reference round the same operands, so what separates them is
(a) the order of the float32 accumulation (the reference sums in float64 and rounds once):
~2^-24 * sqrt(K) relative to a GEMM's terms, and (b) operands rounded to bf16 from float32
values that (a) moved across a rounding boundary: such an element lands one bf16 step
(relative 2^-8) away. A fraction f ~ 2^-24 sqrt(K) / 2^-8 of them flips (K = 4H = 512: f ~
3e-4), which moves a GEMM's result by ~2^-8 sqrt(f) ~ 7e-5 relative; a flip changes the next
step's operands by far more than (a), so in backward (dgates -> dh -> dgates) the flips
cascade and the error grows with the steps. Measured over the shapes below on 2026-12-01
(AMD EPYC Zen 3, avx2 and generic paths): forward at most 4.6e-5, backward at most 4.8e-4
(T=784 included). TOL_REF = 2^-9, half a bf16 step, bounds that with a margin of 4x; the
rounding points themselves are pinned by a sharper test on problems small enough that no
cascade starts (test_rounding_points_are_the_references: 10x nearer the bf16 reference than
float32 is, where the measured distances are ~2e-7 against ~5e-4).

Against float32 (the value bf16 approximates): each GEMM operand carries a relative rounding
error of at most u = 2^-9 (uniform, standard deviation u / sqrt(3)); a product of two rounded
operands ~sqrt(2) of that; the sum of K random-sign terms keeps the relative size (error and
sum both grow as sqrt(K)), so a GEMM is off by ~u relative and the recurrence compounds a few
of those: TOL_FP32 = 16 u = 2^-5 (measured: at most 6e-3 on these shapes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from trained import trained_run

import lstmcore
from helpers import make_lengths, make_problem, make_stack_params, rel_err
from lstmcore import cuda, nn, ops, reference
from lstmcore._native import core as _core
from lstmcore.cli import evaluate
from lstmcore.mnist import data

TOL_REF = 2.0**-9
TOL_FP32 = 2.0**-5
NAMES = ["y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias"]
SHAPES = [(1, 1, 3, 7), (5, 3, 4, 33), (1, 4, 5, 16), (7, 9, 5, 17), (28, 128, 28, 128)]


PATHS = ["avx512", "avx2", "generic"]


def supported_paths() -> list[str]:
    """The float32 kernel paths (which the emulated bf16 path runs on) this CPU supports."""
    return [name for name in PATHS if _core.isa_supported(name)[0]]


def test_paths_this_cpu_lacks_are_named_with_the_reason() -> None:
    for name in PATHS:
        ok, why = _core.isa_supported(name)
        assert ok or why, name
    assert "generic" in supported_paths()


def on_every_path(fn: Any) -> list[tuple[str, int, Any]]:
    """fn() on every supported path at 1 and 2 threads: [(path, threads, result)]."""
    before = _core.isa()
    out = []
    try:
        for name in supported_paths():
            _core.set_isa(name)
            for n in (1, 2):
                lstmcore.set_num_threads(n)
                out.append((name, n, fn()))
    finally:
        _core.set_isa(before)
        lstmcore.set_num_threads(lstmcore._default_threads())
    return out


@pytest.fixture(params=[1, 2])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    lstmcore.set_num_threads(request.param)
    try:
        yield request.param
    finally:
        lstmcore.set_num_threads(lstmcore._default_threads())


def run_core(p: Any, lengths: Any, reverse: bool, precision: str | None) -> list[Any]:
    y, h_n, c_n, ctx = ops.lstm_forward(
        *p.inputs(), lengths=lengths, reverse=reverse, precision=precision
    )
    return [y, h_n, c_n, *ops.lstm_backward(ctx, *p.grads())]


def run_reference(p: Any, lengths: Any, reverse: bool) -> list[Any]:
    y, h_n, c_n, ctx = reference.lstm_forward(
        *p.inputs(), lengths=lengths, reverse=reverse, precision="bf16"
    )
    return [y, h_n, c_n, *reference.lstm_backward(ctx, *p.grads())]


@pytest.mark.parametrize(("steps", "batch", "inp", "hidden"), SHAPES)
@pytest.mark.parametrize("lengths_kind", ["none", "mixed"])
@pytest.mark.parametrize("reverse", [False, True])
def test_bf16_matches_the_bf16_reference(
    steps: int,
    batch: int,
    inp: int,
    hidden: int,
    lengths_kind: str,
    reverse: bool,
    rng: np.random.Generator,
) -> None:
    """Every supported kernel path, 1 and 2 threads, against one reference run."""
    p = make_problem(rng, steps, batch, inp, hidden, dtype=np.float32)
    lengths = make_lengths(rng, lengths_kind, steps, batch)
    want = run_reference(p, lengths, reverse)
    for path, n, got in on_every_path(lambda: run_core(p, lengths, reverse, "bf16")):
        for name, a, b in zip(NAMES, got, want, strict=True):
            assert a.dtype == np.float32, name
            assert rel_err(a, b) <= TOL_REF, (path, n, name, rel_err(a, b))


@pytest.mark.parametrize(("steps", "batch", "inp", "hidden"), [(6, 4, 16, 256), (3, 2, 28, 512)])
def test_bf16_units_split_matches_the_reference(
    threads: int, steps: int, batch: int, inp: int, hidden: int, rng: np.random.Generator
) -> None:
    """Few rows and many units: two threads share each step's units (the units split), each
    rounding the h and dgates it wrote. The core's tuner alternates the split with one thread
    over the first calls of a shape, so six calls run both."""
    p = make_problem(rng, steps, batch, inp, hidden, dtype=np.float32)
    want = run_reference(p, None, False)
    for _ in range(6):
        got = run_core(p, None, False, "bf16")
        for name, a, b in zip(NAMES, got, want, strict=True):
            assert rel_err(a, b) <= TOL_REF, (name, rel_err(a, b))


def test_bf16_pixel_length_sequence(rng: np.random.Generator) -> None:
    """T = 784 steps of one pixel, as pixel MNIST: the error does not grow with the length."""
    p = make_problem(rng, 784, 4, 1, 16, dtype=np.float32)
    got = run_core(p, None, False, "bf16")
    want = run_reference(p, None, False)
    for name, a, b in zip(NAMES, got, want, strict=True):
        assert rel_err(a, b) <= TOL_REF, (name, rel_err(a, b))


@pytest.mark.parametrize(("steps", "batch", "inp", "hidden"), SHAPES)
def test_bf16_is_within_bf16_tolerance_of_float32(
    steps: int, batch: int, inp: int, hidden: int, rng: np.random.Generator
) -> None:
    p = make_problem(rng, steps, batch, inp, hidden, dtype=np.float32)
    got = run_core(p, None, False, "bf16")
    fp32 = run_core(p, None, False, None)
    for name, a, b in zip(NAMES, got, fp32, strict=True):
        assert rel_err(a, b) <= TOL_FP32, (name, rel_err(a, b))


@pytest.mark.parametrize(
    ("steps", "batch", "inp", "hidden"), [(12, 16, 8, 24), (5, 3, 4, 33), (1, 4, 5, 16)]
)
@pytest.mark.parametrize("reverse", [False, True])
def test_rounding_points_are_the_references(
    steps: int, batch: int, inp: int, hidden: int, reverse: bool, rng: np.random.Generator
) -> None:
    """The bf16 path is far nearer the bf16 reference than float32 is: a kernel that skipped
    a rounding (h, x, a weight, dgates) would sit about as far from it as float32 does."""
    p = make_problem(rng, steps, batch, inp, hidden, dtype=np.float32)
    got = run_core(p, None, reverse, "bf16")
    fp32 = run_core(p, None, reverse, None)
    want = run_reference(p, None, reverse)
    for name, a, f, b in zip(NAMES, got, fp32, want, strict=True):
        assert rel_err(a, b) * 10 < rel_err(f, b), (name, rel_err(a, b), rel_err(f, b))


def test_precision_none_and_fp32_are_float32_bit_for_bit(rng: np.random.Generator) -> None:
    p = make_problem(rng, 6, 5, 4, 9, dtype=np.float32)
    plain = ops.lstm_forward(*p.inputs())
    for precision in (None, "fp32"):
        again = ops.lstm_forward(*p.inputs(), precision=precision)
        for a, b in zip(plain[:3], again[:3], strict=True):
            assert np.array_equal(a, b)
        plain_g = ops.lstm_backward(plain[3], *p.grads())
        again_g = ops.lstm_backward(again[3], *p.grads())
        for a, b in zip(plain_g, again_g, strict=True):
            assert np.array_equal(a, b)


def test_bf16_is_deterministic_and_thread_count_free_for_the_states(
    rng: np.random.Generator,
) -> None:
    """Same bits for the same thread count; y, h_n, c_n, dh0, dc0 the same for any count
    (each element's recurrence is computed the same way whatever the split)."""
    p = make_problem(rng, 10, 64, 8, 32, dtype=np.float32)
    runs = {}
    for n in (1, 2, 2):
        lstmcore.set_num_threads(n)
        try:
            runs.setdefault(n, []).append(run_core(p, None, False, "bf16"))
        finally:
            lstmcore.set_num_threads(lstmcore._default_threads())
    for a, b in zip(runs[2][0], runs[2][1], strict=True):
        assert np.array_equal(a, b)
    for k in (0, 1, 2, 4, 5):  # y, h_n, c_n, dh0, dc0
        assert np.array_equal(runs[1][0][k], runs[2][0][k]), NAMES[k]


def test_context_carries_the_precision(rng: np.random.Generator) -> None:
    p = make_problem(rng, 4, 3, 5, 6, dtype=np.float32)
    ctx = ops.lstm_forward(*p.inputs(), precision="bf16")[3]
    assert ctx.precision == "bf16" and ctx.native.precision == "bf16"
    got = ops.lstm_backward(ctx, *p.grads())
    want = run_reference(p, None, False)[3:]
    for name, a, b in zip(NAMES[3:], got, want, strict=True):
        assert rel_err(a, b) <= TOL_REF, name


def test_bf16_refuses_float64_and_unknown_precisions(rng: np.random.Generator) -> None:
    p = make_problem(rng, 2, 2, 3, 4, dtype=np.float64)
    with pytest.raises(ValueError, match=r"^precision: bf16 runs on float32 arrays"):
        ops.lstm_forward(*p.inputs(), precision="bf16")
    with pytest.raises(ValueError, match=r"^precision: expected one of"):
        ops.lstm_forward(*p.inputs(), precision="bf17")
    with pytest.raises(ValueError, match=r"^precision: expected one of"):
        ops.lstm_forward(*p.inputs(), precision=16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^precision: bf16 runs on float32 arrays"):
        nn.LSTM(3, 4, dtype=np.float64, precision="bf16")
    with pytest.raises(cuda.GpuUnsupportedError, match=re.escape(str(cuda.refuse("bf16")))):
        nn.LSTM(3, 4, device="cuda", precision="bf16")


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True), (3, False)])
def test_nn_lstm_bf16_stack_matches_the_reference(
    layers: int, bidirectional: bool, rng: np.random.Generator
) -> None:
    steps, batch, inp, hidden = 7, 5, 6, 12
    lstm = nn.LSTM(inp, hidden, layers, bidirectional, precision="bf16", rng=rng)
    lstm.load_state_dict(make_stack_params(rng, inp, hidden, layers, bidirectional, np.float32))
    x = rng.standard_normal((steps, batch, inp)).astype(np.float32)
    lengths = make_lengths(rng, "mixed", steps, batch)
    y, h_n, c_n = lstm.forward(x, lengths=lengths)
    dirs = 2 if bidirectional else 1
    dy = rng.standard_normal((steps, batch, dirs * hidden)).astype(np.float32)
    dh_n = rng.standard_normal((layers * dirs, batch, hidden)).astype(np.float32)
    dx, dh0, dc0 = lstm.backward(dy, dh_n, None)
    r_y, r_h, r_c, r_ctx = reference.stack_forward(
        x,
        None,
        None,
        lstm.params,
        num_layers=layers,
        bidirectional=bidirectional,
        lengths=lengths,
        precision="bf16",
    )
    r_dx, r_dh0, r_dc0, r_grads = reference.stack_backward(r_ctx, dy, dh_n, None)
    assert y is not None and dx is not None
    for name, a, b in [
        ("y", y, r_y),
        ("h_n", h_n, r_h),
        ("c_n", c_n, r_c),
        ("dx", dx, r_dx),
        ("dh0", dh0, r_dh0),
        ("dc0", dc0, r_dc0),
    ] + [(k, lstm.grads[k], r_grads[k]) for k in lstm.params]:
        assert rel_err(a, b) <= TOL_REF, (name, rel_err(a, b))


def test_classifier_precision_can_change_between_calls(rng: np.random.Generator) -> None:
    """Parameters are float32 either way: one model evaluates in bf16 and in float32."""
    model = nn.SequenceClassifier(6, 10, 4, seed=1)
    images = rng.standard_normal((8, 5, 6)).astype(np.float32)
    fp32 = model.logits(images)
    model.precision = "bf16"
    bf16 = model.logits(images)
    assert model.lstm.precision == "bf16"
    assert 0 < rel_err(bf16, fp32) <= TOL_FP32
    model.precision = None
    assert np.array_equal(model.logits(images), fp32)


def test_a_checkpoint_loads_and_evaluates_in_bf16(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Checkpoints hold float32 parameters: a model evaluates in bf16 as in float32, through
    lstmcore.load and the evaluate command, and agrees with float32 on nearly every image."""
    best = trained_run(tmp_path_factory) / "best.npz"
    fp32 = lstmcore.load(best)
    bf16 = lstmcore.load(best, precision="bf16")
    assert bf16.network.precision == "bf16" and fp32.network.precision is None
    images = data.load_mnist().test_images[:2000]
    assert rel_err(bf16.logits(images), fp32.logits(images)) <= TOL_FP32
    agree = float(np.mean(bf16.predict(images) == fp32.predict(images)))
    assert agree >= 0.99, agree
    with pytest.raises(ValueError, match=r"^precision: expected one of"):
        lstmcore.load(best, precision="int8")
    assert evaluate.main([str(best), "--precision", "bf16"]) == 0


def test_isa_names_the_path_of_each_precision() -> None:
    path = lstmcore.isa()
    assert lstmcore.isa("fp32") == path and path in PATHS
    assert lstmcore.isa("bf16") == f"emulated on {path}"
    with pytest.raises(ValueError, match="precision"):
        lstmcore.isa("fp8")
