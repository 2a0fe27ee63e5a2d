"""lstmcore.ops (the C++ core) against the NumPy reference, and its argument checks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest

import lstmcore
from helpers import Problem, make_problem, rel_err
from lstmcore import ops
from lstmcore import reference as ref

# relative error bounds, norm(a - b) / norm(b)
TOL = {np.float64: 1e-10, np.float32: 1e-5}

SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (1, 3, 5, 7),
    (4, 1, 6, 7),
    (5, 4, 3, 33),
    (7, 3, 10, 4),
    (784, 2, 1, 8),  # pixel-MNIST length
    (28, 128, 28, 128),  # the MNIST row model
]
OUTPUTS = ["y", "h_n", "c_n"]
GRADS = ["dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias"]


def compare(p: Problem, dtype: Any, make_layout: Any = None) -> dict[str, float]:
    """Runs ops and the reference on the same values; returns every relative error."""
    args = p.inputs()
    grads = p.grads()
    if make_layout is not None:
        args = tuple(make_layout(a) for a in args)
        grads = tuple(make_layout(a) for a in grads)
    *out, ctx = ops.lstm_forward(*args)
    got_grads = ops.lstm_backward(ctx, *grads)
    *want, rctx = ref.lstm_forward(*p.inputs())
    want_grads = ref.lstm_backward(rctx, *p.grads())
    errors = {}
    for name, a, b in zip(OUTPUTS + GRADS, [*out, *got_grads], [*want, *want_grads], strict=True):
        assert a.dtype == dtype, name
        errors[name] = rel_err(a, b)
    return errors


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_matches_reference(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> None:
    p = make_problem(rng, *shape, dtype=dtype)
    errors = compare(p, dtype)
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= TOL[dtype], f"{worst}: {errors[worst]:.2e} ({errors})"


def fortran(a: np.ndarray) -> np.ndarray:
    return np.asfortranarray(a)


def strided(a: np.ndarray) -> np.ndarray:
    """The same values as a non-contiguous view (every other element of a bigger array)."""
    big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), dtype=a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def reversed_view(a: np.ndarray) -> np.ndarray:
    """The same values as a negative-stride view."""
    return np.flip(np.flip(a).copy())


def unaligned(a: np.ndarray) -> np.ndarray:
    """The same values, C-contiguous but one byte off the element size's alignment (read from
    a byte buffer, as np.frombuffer gives)."""
    raw = np.zeros(a.nbytes + 1, dtype=np.uint8)
    out = raw[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("layout", [fortran, strided, reversed_view, unaligned])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_any_memory_layout(rng: np.random.Generator, layout: Any, dtype: Any) -> None:
    p = make_problem(rng, 6, 5, 4, 9, dtype=dtype)
    if layout is not fortran:
        probe = layout(p.x)
        # the layout really is unusual
        assert not (probe.flags.c_contiguous and probe.flags.aligned)
    errors = compare(p, dtype, layout)
    assert max(errors.values()) <= TOL[dtype], errors


def test_inputs_are_never_written(rng: np.random.Generator) -> None:
    p = make_problem(rng, 5, 3, 4, 6, dtype=np.float32)
    arrays = [*p.inputs(), *p.grads()]
    before = [a.copy() for a in arrays]
    *_, ctx = ops.lstm_forward(*p.inputs())
    ops.lstm_backward(ctx, *p.grads())
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_none_state_and_gradients_mean_zeros(rng: np.random.Generator) -> None:
    p = make_problem(rng, 5, 3, 4, 6)
    zeros = np.zeros_like(p.h0)
    y1, h1, c1, ctx1 = ops.lstm_forward(p.x, None, None, p.w_ih, p.w_hh, p.bias)
    y2, h2, c2, ctx2 = ops.lstm_forward(p.x, zeros, zeros, p.w_ih, p.w_hh, p.bias)
    for a, b in ((y1, y2), (h1, h2), (c1, c2)):
        np.testing.assert_array_equal(a, b)
    g1 = ops.lstm_backward(ctx1, p.dy, None, None)
    g2 = ops.lstm_backward(ctx2, p.dy, zeros, zeros)
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.linalg.norm(g1[3]) > 0  # dy alone still gives gradients


def test_need_dx_false_skips_dx_only(rng: np.random.Generator) -> None:
    p = make_problem(rng, 4, 3, 5, 6)
    *_, ctx = ops.lstm_forward(*p.inputs())
    full = ops.lstm_backward(ctx, *p.grads())
    partial = ops.lstm_backward(ctx, *p.grads(), need_dx=False)
    assert partial[0] is None
    for a, b in zip(full[1:], partial[1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_backward_twice_gives_the_same_gradients(rng: np.random.Generator) -> None:
    p = make_problem(rng, 4, 3, 5, 6, dtype=np.float32)
    *_, ctx = ops.lstm_forward(*p.inputs())
    first = ops.lstm_backward(ctx, *p.grads())
    second = ops.lstm_backward(ctx, *p.grads())
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


# ---- zero-size dimensions -------------------------------------------------------------------


def test_zero_steps_returns_initial_state_and_passes_gradients_through(
    rng: np.random.Generator,
) -> None:
    p = make_problem(rng, 0, 3, 4, 5)
    y, h_n, c_n, ctx = ops.lstm_forward(*p.inputs())
    assert y.shape == (0, 3, 5)
    np.testing.assert_array_equal(h_n, p.h0)
    np.testing.assert_array_equal(c_n, p.c0)
    dx, dh0, dc0, dw_ih, dw_hh, dbias = ops.lstm_backward(ctx, p.dy, p.dh_n, p.dc_n)
    assert dx is not None and dx.shape == (0, 3, 4)
    np.testing.assert_array_equal(dh0, p.dh_n)
    np.testing.assert_array_equal(dc0, p.dc_n)
    for g in (dw_ih, dw_hh, dbias):
        np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize(
    "shape", [(4, 0, 3, 5), (4, 3, 3, 0), (4, 3, 0, 5)], ids=["B0", "H0", "I0"]
)
def test_zero_size_dimensions_match_reference(
    rng: np.random.Generator, shape: tuple[int, ...]
) -> None:
    p = make_problem(rng, *shape)
    *out, ctx = ops.lstm_forward(*p.inputs())
    *want, rctx = ref.lstm_forward(*p.inputs())
    got_grads = ops.lstm_backward(ctx, *p.grads())
    want_grads = ref.lstm_backward(rctx, *p.grads())
    for a, b in zip([*out, *got_grads], [*want, *want_grads], strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# ---- NaN and Inf ------------------------------------------------------------------------------


def test_nan_in_x_reaches_only_its_row_from_its_step_on(rng: np.random.Generator) -> None:
    p = make_problem(rng, 6, 3, 4, 5)
    p.x[2, 1, 0] = np.nan
    y, h_n, c_n, _ = ops.lstm_forward(*p.inputs())
    assert np.all(np.isfinite(y[:2]))
    assert np.all(np.isfinite(y[:, [0, 2]]))
    assert np.all(np.isnan(y[2:, 1]))
    assert np.all(np.isnan(h_n[1])) and np.all(np.isnan(c_n[1]))


def test_infinite_preactivations_saturate_without_nan(rng: np.random.Generator) -> None:
    p = make_problem(rng, 3, 2, 4, 5)
    p.x[:] = 0.0
    p.bias[:] = np.inf  # every gate saturates at 1: c grows by one a step
    y, _, c_n, _ = ops.lstm_forward(p.x, None, None, p.w_ih, p.w_hh, p.bias)
    np.testing.assert_allclose(c_n, 3.0)
    np.testing.assert_allclose(y[-1], np.tanh(3.0))


# ---- bad arguments ----------------------------------------------------------------------------


def good_args(rng: np.random.Generator) -> dict[str, np.ndarray]:
    p = make_problem(rng, 3, 2, 4, 5, dtype=np.float32)
    return dict(zip(["x", "h0", "c0", "w_ih", "w_hh", "bias"], p.inputs(), strict=True))


@pytest.mark.parametrize(
    ("name", "bad", "message"),
    [
        ("x", lambda a: a[..., :3], "w_ih: expected shape (20, 3) float32, got (20, 4)"),
        ("x", lambda a: a[0], "x: expected 3 dimensions"),
        ("x", lambda a: a.astype(np.int32), "x: expected dtype float32 or float64, got int32"),
        ("x", lambda a: a.astype(np.float16), "x: expected dtype float32 or float64, got float16"),
        ("x", lambda a: a.tolist(), "x: expected a numpy array, got list"),
        ("x", lambda a: np.float32(1.0), "x: expected a numpy array"),
        ("x", lambda a: None, "x: expected a numpy array, got None"),
        ("h0", lambda a: a[:1], "h0: expected shape (2, 5) float32, got (1, 5)"),
        ("c0", lambda a: a[:, :4], "c0: expected shape (2, 5) float32, got (2, 4)"),
        ("c0", lambda a: a.astype(np.float64), "c0: dtype float64 differs from x's float32"),
        ("w_ih", lambda a: a[:16], "w_ih: expected shape (20, 4) float32, got (16, 4)"),
        ("w_hh", lambda a: a[:16], "w_hh: expected shape (20, 5) float32, got (16, 5)"),
        ("w_hh", lambda a: a[0], "w_hh: expected a 2-d array (4H, H), got (5,) float32"),
        ("w_hh", lambda a: None, "w_hh: expected a numpy array, got None"),
        ("bias", lambda a: a[:19], "bias: expected shape (20,) float32, got (19,)"),
        ("bias", lambda a: a.reshape(4, 5), "bias: expected shape (20,) float32, got (4, 5)"),
        ("bias", lambda a: a.astype(object), "bias: expected dtype float32 or float64, got object"),
    ],
)
def test_bad_forward_argument_names_it(
    rng: np.random.Generator, name: str, bad: Any, message: str
) -> None:
    args = good_args(rng)
    args[name] = bad(args[name])
    with pytest.raises(ValueError) as info:
        ops.lstm_forward(**args)
    assert message.split(" float32")[0] in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("dy", (3, 2, 4), "dy: expected shape (3, 2, 5) float32, got (3, 2, 4) float32"),
        ("dh_n", (5, 2), "dh_n: expected shape (2, 5) float32, got (5, 2) float32"),
        ("dc_n", (2, 5, 1), "dc_n: expected shape (2, 5) float32, got (2, 5, 1) float32"),
    ],
)
def test_bad_backward_gradient_names_it(
    rng: np.random.Generator, name: str, shape: tuple[int, ...], message: str
) -> None:
    *_, ctx = ops.lstm_forward(**good_args(rng))
    grads: dict[str, Any] = {"dy": None, "dh_n": None, "dc_n": None}
    grads[name] = rng.standard_normal(shape).astype(np.float32)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ops.lstm_backward(ctx, **grads)


def test_backward_rejects_other_dtype_and_foreign_context(rng: np.random.Generator) -> None:
    *_, ctx = ops.lstm_forward(**good_args(rng))
    with pytest.raises(ValueError, match="differs from the forward pass's float32"):
        ops.lstm_backward(ctx, None, np.zeros((2, 5)), None)
    with pytest.raises(ValueError, match="ctx: expected the LstmContext"):
        ops.lstm_backward(object(), None, None, None)  # type: ignore[arg-type]


def test_unknown_device_is_rejected(rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="device: expected one of"):
        ops.lstm_forward(**good_args(rng), device="tpu")


# ---- threads and determinism --------------------------------------------------------------------


def test_thread_count_controls_and_keeps_results(rng: np.random.Generator) -> None:
    p = make_problem(rng, 28, 64, 28, 64, dtype=np.float32)
    before = lstmcore.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1):
            lstmcore.set_num_threads(n)
            assert lstmcore.get_num_threads() == n
            *out, ctx = ops.lstm_forward(*p.inputs())
            results.append([*out, *ops.lstm_backward(ctx, *p.grads())])
        for a, b in zip(results[0], results[2], strict=True):
            np.testing.assert_array_equal(a, b)  # same thread count: same bits
        for a, b in zip(results[0], results[1], strict=True):
            assert rel_err(a, b) <= 1e-6
    finally:
        lstmcore.set_num_threads(before)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    "shape",
    [(9, 57, 5, 16), (4, 200, 3, 40), (3, 200, 6, 300)],
    ids=["rows-split-uneven", "rows-split-odd-H", "split-by-gates"],
)
def test_weight_gradients_on_several_threads_match_the_reference(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: Any, threads: int
) -> None:
    """dW on several threads: with few gate rows (4H <= 1024) the threads split the GEMM's
    T*B rows into slabs summed in order (513 rows in 2 slabs, 800 in 2 or 3, uneven); with
    more (4H = 1200) they split its output rows. Every output against the reference (B=200
    also runs the forward and backward rows in chunks), and the same bits again on the same
    thread count."""
    p = make_problem(rng, *shape, dtype=dtype)
    before = lstmcore.get_num_threads()
    try:
        lstmcore.set_num_threads(threads)
        errors = compare(p, dtype)
        *_, ctx = ops.lstm_forward(*p.inputs())
        first = ops.lstm_backward(ctx, *p.grads())
        *_, ctx = ops.lstm_forward(*p.inputs())
        again = ops.lstm_backward(ctx, *p.grads())
    finally:
        lstmcore.set_num_threads(before)
    worst = max(errors, key=errors.__getitem__)
    assert errors[worst] <= TOL[dtype], f"{worst}: {errors[worst]:.2e} ({errors})"
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [0, -3])
def test_set_num_threads_rejects_bad_counts(bad: int) -> None:
    with pytest.raises(ValueError, match="n must be >= 1"):
        lstmcore.set_num_threads(bad)
    with pytest.raises(TypeError):
        lstmcore.set_num_threads("2")  # type: ignore[arg-type]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


@pytest.mark.subprocess
def test_env_var_sets_default_threads() -> None:
    done = run_python(
        "import lstmcore; print(lstmcore.get_num_threads())", LSTMCORE_NUM_THREADS="1"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
    bad = run_python("import lstmcore", LSTMCORE_NUM_THREADS="zero")
    assert bad.returncode != 0
    assert "LSTMCORE_NUM_THREADS must be a positive integer" in bad.stderr


@pytest.mark.subprocess
def test_more_threads_than_the_pool_runs_still_computes_everything(tmp_path: Any) -> None:
    """set_num_threads(300): the pool runs at most 255 threads, and the core splits its work
    into no more parts than that (4H = 2400 gate columns in blocks of 8 would be 300 parts,
    the last 45 never run). The core runs in a child process, so its 254 workers leave this
    one alone; the child reads the problem from a file and writes back what it computed."""
    p = make_problem(np.random.default_rng(3), 3, 2, 5, 600, dtype=np.float64)
    inputs, results = tmp_path / "inputs.npz", tmp_path / "results.npz"
    np.savez(inputs, *p.inputs(), *p.grads())
    code = f"""
import numpy as np, lstmcore
from lstmcore import ops
a = np.load({str(inputs)!r})
arrays = [a[f"arr_{{k}}"] for k in range(len(a.files))]
lstmcore.set_num_threads(300)
*out, ctx = ops.lstm_forward(*arrays[:6])
got = [*out, *ops.lstm_backward(ctx, *arrays[6:])]
np.savez({str(results)!r}, *got)
print(lstmcore.get_num_threads())
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    # OpenBLAS holds work buffers for MAX_THREADS callers at once; more spill into a table it
    # warns may crash (it did: SIGSEGV on aarch64), so the core's GEMMs run on at most that many
    assert "NUM_THREADS exceeded" not in done.stderr, done.stderr
    r = np.load(results)
    got = [r[f"arr_{k}"] for k in range(len(r.files))]
    *want, rctx = ref.lstm_forward(*p.inputs())
    want = [*want, *ref.lstm_backward(rctx, *p.grads())]
    for name, a, b in zip(OUTPUTS + GRADS, got, want, strict=True):
        assert rel_err(a, b) <= TOL[np.float64], (name, rel_err(a, b))
    assert int(done.stdout.strip()) == 255


def matmul_from_many_threads(threads: int, m: int, k: int, n: int, limit: int = 0) -> list[str]:
    """In a child process (the limit on threads inside BLAS is the process's; what OpenBLAS
    prints is seen): `threads` Python threads released at once each call matmul (m, k) x (k, n)
    four times, with the limit lowered to `limit` if given. Returns the child's report: how
    many threads finished, the worst error against float64, the most threads inside BLAS at
    once."""
    code = f"""
import threading, numpy as np
from lstmcore import _core, ops
if {limit}:
    _core._set_blas_call_limit_for_tests({limit})
    assert _core.blas_call_limit() == {limit}, _core.blas_call_limit()
rng = np.random.default_rng(11)
a = rng.standard_normal(({m}, {k})).astype(np.float32)
b = rng.standard_normal(({k}, {n})).astype(np.float32)
want = a.astype(np.float64) @ b.astype(np.float64)
start = threading.Barrier({threads})
worst = []
def work():
    start.wait()
    worst.append(max(float(np.abs(ops.matmul(a, b) - want).max()) for _ in range(4)))
threads = [threading.Thread(target=work) for _ in range({threads})]
for t in threads: t.start()
for t in threads: t.join()
print(len(worst), max(worst), _core._blas_peak_calls())
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert "NUM_THREADS exceeded" not in done.stderr, done.stderr
    report: list[str] = done.stdout.split()
    assert int(report[0]) == threads, report
    # float32 products of k terms of size ~1: within 1e-3 of the float64 product
    assert float(report[1]) <= 1e-3, report
    return report


@pytest.mark.subprocess
def test_more_python_threads_in_matmul_than_blas_holds_all_get_the_right_product() -> None:
    """160 Python threads call matmul at once (it releases the GIL): more than the 64 callers
    OpenBLAS's build holds buffers for. Without the core's limit on callers inside BLAS this
    warned "may still crash" on aarch64; with it, the extra threads wait their turn."""
    *_, peak = matmul_from_many_threads(160, 128, 256, 96)
    assert 1 <= int(peak) <= 64, peak


@pytest.mark.subprocess
def test_threads_past_the_blas_limit_wait_their_turn() -> None:
    """The limit lowered to 2: 16 Python threads calling matmul at once all get the right
    product, never more than 2 are inside at once, and none waits forever (the wait is what a
    machine with more threads than OpenBLAS's MAX_THREADS reaches)."""
    *_, peak = matmul_from_many_threads(16, 192, 256, 192, limit=2)
    assert 1 <= int(peak) <= 2, peak


@pytest.mark.subprocess
def test_a_fork_child_gets_the_places_in_blas_its_parents_threads_held() -> None:
    """A thread stays in matmul while the main thread forks, with the limit at 1: in the
    child that thread does not exist, so its place must be free there, or the child's first
    GEMM waits forever (SIGALRM ends it after 20 s). The parent and child are a child of
    this process."""
    code = """
import os, signal, threading, time
import numpy as np
from lstmcore import _core, ops
_core._set_blas_call_limit_for_tests(1)
a = np.ones((1024, 1024), np.float32)  # a GEMM of 2 GFLOP: the worker is inside nearly always
stop = threading.Event()
def busy():
    while not stop.is_set():
        ops.matmul(a, a)
worker = threading.Thread(target=busy)
worker.start()
time.sleep(0.2)
pid = os.fork()  # the GIL is released in matmul, so main runs while the worker is in one
if pid == 0:
    signal.alarm(20)
    os._exit(0 if ops.matmul(a[:4], a)[0, 0] == 1024.0 else 3)
stop.set()
worker.join()
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"], (done.stdout, done.stderr)


def test_two_python_threads_match_sequential_runs(rng: np.random.Generator) -> None:
    problems = [make_problem(rng, 20, 16, 8, 32, dtype=np.float32) for _ in range(2)]

    def run(p: Problem) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for _ in range(10):
            *fwd, ctx = ops.lstm_forward(*p.inputs())
            out = [*fwd, *ops.lstm_backward(ctx, *p.grads())]
        return out

    sequential = [run(p) for p in problems]
    concurrent: list[list[np.ndarray]] = [[], []]

    def worker(k: int) -> None:
        concurrent[k] = run(problems[k])

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seq, con in zip(sequential, concurrent, strict=True):
        assert len(con) == len(seq)
        for a, b in zip(seq, con, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("trans_a", "trans_b"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_matmul_matches_numpy(
    rng: np.random.Generator, dtype: Any, trans_a: bool, trans_b: bool
) -> None:
    a = rng.standard_normal((7, 5) if not trans_a else (5, 7)).astype(dtype)
    b = rng.standard_normal((5, 3) if not trans_b else (3, 5)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    got = ops.matmul(np.asfortranarray(a), b, trans_a=trans_a, trans_b=trans_b)
    assert got.dtype == dtype and got.shape == (7, 3)
    assert rel_err(got, want) <= TOL[dtype]


def test_matmul_rejects_bad_arguments(rng: np.random.Generator) -> None:
    a = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match="b: inner dimension 4 does not match a's 3"):
        ops.matmul(a, rng.standard_normal((4, 2)))
    with pytest.raises(ValueError, match="differs from a's float64"):
        ops.matmul(a, rng.standard_normal((3, 2)).astype(np.float32))
    with pytest.raises(ValueError, match="a: expected a 2-d numpy array"):
        ops.matmul(a[0], a)
