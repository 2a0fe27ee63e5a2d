"""The CUDA path: the build, the import and its failure modes, the host-side rules (error texts,
the reduction plans, the optimizer's arithmetic against the CPU's), and the ops against the
NumPy reference and the CPU.

Tests that need a GPU skip with the reason where none is usable; with LSTMCORE_REQUIRE_GPU=1
(tools/gpu_check.sh sets it) every such skip is a failure carrying the same reason, so a broken
GPU build can never look green. tests/mnist/test_cuda_train.py holds the trainer's GPU tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lstmcore
from helpers import REQUIRE_GPU, cuda_module, make_problem, rel_err, skip_or_fail
from lstmcore import cuda, ops, optim
from lstmcore import reference as ref
from lstmcore.nn import LSTM

AVAILABLE, REASON = lstmcore.cuda_available()
TOL = {np.float64: 1e-10, np.float32: 1e-5}
SHAPES = [
    (1, 1, 1, 1),
    (1, 3, 5, 7),
    (4, 1, 6, 7),
    (5, 4, 3, 33),
    (7, 3, 10, 4),
    (3, 3, 5, 100),  # B*H = 300: two blocks of 256, the last partial
    (2, 5, 4, 129),  # B*H = 645, 4H = 516: partial blocks of both the cells and the sums
    (784, 2, 1, 8),  # T*B = 1568 rows: the two-level column sum
    (28, 128, 28, 128),
]


# ---- the build and the import ----------------------------------------------------------------


def test_cuda_module_is_built_when_required() -> None:
    """CI builds with LSTMCORE_CUDA=ON: the extension must then exist (compiled and linked)."""
    if os.environ.get("LSTMCORE_CUDA", "").upper() != "ON" and not REQUIRE_GPU:
        pytest.skip("LSTMCORE_CUDA=ON is not set: the CUDA module is optional here")
    assert cuda.module_path() is not None, f"no _cuda module in {Path(lstmcore.__file__).parent}"


def test_a_built_module_imports_wherever_cublas_can_be_found() -> None:
    """A module that exists must load (an unresolved symbol, a missing cuBLAS on the run path
    are exactly what a file-exists check misses) wherever cuBLAS is in one of the places
    searched; where it is in none, the reason names them all."""
    path = cuda.module_path()
    if path is None:
        skip_or_fail("lstmcore._cuda was not built here")
    sonames = cuda.needed_sonames(path)
    assert sonames and all(n.startswith("libcublas.so.") for n in sonames), sonames
    dirs = cuda.search_dirs()
    if cuda.find_cublas(sonames, dirs) is None:
        try:
            cuda.load_module()
        except ImportError as err:
            for folder in dirs:
                assert str(folder) in str(err)
            assert "LSTMCORE_CUBLAS_DIR" in str(err) and sonames[0] in str(err)
            if REQUIRE_GPU:
                pytest.fail(f"cuBLAS is not installed where the GPU check runs: {err}")
            return
    module = cuda.load_module()  # ImportError here is the failure this test exists for
    assert module.param_layout(28, 16, 10)
    assert cuda.cublas_location() is not None


def test_availability_gives_a_reason() -> None:
    ok, reason = lstmcore.cuda_available()
    assert isinstance(ok, bool) and reason
    if not ok:
        with pytest.raises(RuntimeError, match=reason[:20].replace("(", r"\(")):
            ops.lstm_forward(
                *make_problem(np.random.default_rng(0), 2, 2, 2, 2).inputs(), device="cuda"
            )


def test_cublas_is_searched_for_and_every_place_is_named(tmp_path: Path) -> None:
    """The loader's search, on folders made here: found where the file is, and when it is
    nowhere the reason lists each folder, the library and the two ways to supply it."""
    empty, full = tmp_path / "empty", tmp_path / "nvidia" / "cu13" / "lib"
    empty.mkdir()
    full.mkdir(parents=True)
    sonames = ["libcublas.so.13"]
    assert cuda.find_cublas(sonames, [empty]) is None
    (full / "libcublas.so.13").write_bytes(b"")
    assert cuda.find_cublas(sonames, [empty, full]) == full
    reason = cuda.missing_reason(sonames, [empty, tmp_path / "cuda" / "lib64"])
    for part in (
        str(empty),
        str(tmp_path / "cuda" / "lib64"),
        "libcublas.so.13",
        "LD_LIBRARY_PATH",
        "LSTMCORE_CUBLAS_DIR",
        "nvidia-cublas",
    ):
        assert part in reason, part


def test_the_search_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LSTMCORE_CUBLAS_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "toolkit"))
    site = tmp_path / "site"
    (site / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(site)])
    dirs = cuda.search_dirs()
    assert dirs[0] == tmp_path / "mine"
    assert dirs[1] == site / "nvidia" / "cu13" / "lib"
    assert tmp_path / "toolkit" / "lib64" in dirs
    assert Path("/usr/local/cuda/lib64") in dirs


def test_the_needed_cublas_is_read_from_the_binary(tmp_path: Path) -> None:
    fake = tmp_path / "_cuda.so"
    fake.write_bytes(b"\x7fELF\0libscipy_openblas.so\0libcublas.so.12\0libc.so.6\0")
    assert cuda.needed_sonames(fake) == ["libcublas.so.12"]
    assert cuda.needed_sonames(tmp_path / "missing.so") == ["libcublas.so.13"]


@pytest.mark.subprocess
def test_a_missing_cublas_gives_the_places_looked_in(tmp_path: Path) -> None:
    """End to end in a fresh interpreter whose search finds no cuBLAS (two empty folders): the
    reason available() gives names both and the loader's own path (skipped where this
    machine's system loader finds a cuBLAS anyway)."""
    if cuda.module_path() is None:
        skip_or_fail("lstmcore._cuda was not built here")
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from lstmcore import cuda\n"
        "cuda.search_dirs = lambda: [Path(sys.argv[1]), Path(sys.argv[2])]\n"
        "ok, reason = cuda.available()\n"
        "assert not ok\n"
        "print(reason)\n"
    )
    a, b = tmp_path / "a", tmp_path / "b" / "lib64"
    out = subprocess.run(
        [sys.executable, "-c", code, str(a), str(b)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    reason = out.stdout.strip()
    if "not found" not in reason:
        pytest.skip(f"the system loader finds a cuBLAS on this machine: {reason}")
    assert reason.startswith("lstmcore._cuda is built but cannot load: libcublas.so.")
    assert str(a) in reason and str(b) in reason and "LD_LIBRARY_PATH" in reason


# ---- host-side rules, checked without a GPU ------------------------------------------------


def test_no_driver_and_an_old_driver_are_told_apart() -> None:
    module = cuda_module()
    insufficient, no_device = 35, 100  # cudaErrorInsufficientDriver, cudaErrorNoDevice
    none = module.unusable_reason(insufficient, 0, 13000)
    assert "no NVIDIA driver is loaded" in none and "cudaErrorInsufficientDriver" in none
    old = module.unusable_reason(insufficient, 12040, 13000)
    assert "supports CUDA 12.4" in old and "CUDA 13.0 runtime" in old
    assert "update the driver" in old
    empty = module.unusable_reason(no_device, 13000, 13000)
    assert "sees no CUDA device" in empty and "cudaErrorNoDevice" in empty
    if not AVAILABLE and REASON.startswith("no CUDA device is usable"):
        # this machine's own reason comes from the same function
        assert "cudaError" in REASON or "no CUDA device is visible" in REASON


def test_cuda_and_cublas_errors_carry_their_names_and_texts() -> None:
    module = cuda_module()
    text = module.describe_cublas_status(7)
    assert text.startswith("CUBLAS_STATUS_INVALID_VALUE (7): ") and len(text) > 40
    assert module.describe_cuda_error(2).startswith("cudaErrorMemoryAllocation (2): ")
    with pytest.raises(RuntimeError, match=r"CUBLAS_STATUS_EXECUTION_FAILED \(13\): .+ \(.+:\d+\)"):
        module.check_cublas(13)
    module.check_cublas(0)  # CUBLAS_STATUS_SUCCESS


@pytest.mark.parametrize("rows", [1, 7, 63, 64, 65, 128, 1000, 3584, 32768, 100352, 10**6])
def test_the_column_sum_plan_covers_every_row_once(rows: int) -> None:
    chunk_rows, chunks = cuda_module().column_sum_plan(rows)
    assert 1 <= chunks <= 512  # level two reads at most 512 rows; the grid's y fits
    assert (chunks - 1) * chunk_rows < rows <= chunks * chunk_rows
    assert chunk_rows >= 64 or chunks == 1


def test_the_plans_depend_on_the_size_alone() -> None:
    module = cuda_module()
    assert module.column_sum_plan(0) == (0, 0)
    assert module.column_sum_plan(100352) == (196, 512)  # pixel MNIST, B=128
    assert module.column_sum_plan(3584) == (64, 56)  # MNIST rows, B=128
    for count in (0, 1, 4096, 4097, 82570, 1_100_000):
        chunk, blocks = module.reduce_plan(count)
        assert blocks >= 1 and (blocks - 1) * chunk < max(count, 1) <= blocks * chunk
        assert blocks <= 256


def _adam_case(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[np.ndarray]]:
    p = rng.standard_normal(n).astype(np.float32)
    grads = [(rng.standard_normal(n) * 0.1).astype(np.float32) for _ in range(4)]
    return p, grads


@pytest.mark.parametrize(
    ("decoupled", "weight_decay", "clip"),
    [(False, 0.0, 0.0), (False, 0.01, 0.0), (True, 0.05, 0.0), (False, 0.0, 0.5), (True, 0.1, 3.0)],
    ids=["adam", "adam-l2", "adamw", "adam-clip", "adamw-clip"],
)
def test_the_gpu_adam_rule_is_the_cpus_bit_for_bit(
    rng: np.random.Generator, decoupled: bool, weight_decay: float, clip: float
) -> None:
    """The device kernel's element code (run on the host) against the CPU's Adam/AdamW and
    clip_grad_norm over four steps, varying lr: the scalars formed in double on the host as
    cpp/src/optim_cpu.cpp forms them, every float operation rounded once."""
    module = cuda_module()
    p0, grads = _adam_case(rng, 1001)
    lrs = [5e-3, 3.7e-3, 1e-3, 2.9e-4]
    cpu_p = p0.copy()
    opt = optim.Adam(
        {"w": cpu_p},
        lrs[0],
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=weight_decay,
        decoupled=decoupled,
    )
    gpu_p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    kind = "adamw" if decoupled else "adam"
    for step, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        g_cpu = {"w": g.copy()}
        norm = optim.clip_grad_norm(g_cpu, clip) if clip > 0 else 0.0
        if clip > 0:
            assert norm > clip  # the clip engages
        opt.lr = lr
        opt.step(g_cpu)
        module.host_update(
            gpu_p,
            g,
            m,
            v,
            kind,
            lr,
            0.0,
            weight_decay,
            0.9,
            0.999,
            1e-8,
            clip,
            norm,
            step,
            step == 1,
        )
        np.testing.assert_array_equal(gpu_p, cpu_p)
        np.testing.assert_array_equal(m, opt.state["exp_avg:w"])
        np.testing.assert_array_equal(v, opt.state["exp_avg_sq:w"])


def test_the_old_float_rule_was_not_the_cpus() -> None:
    """Why the scalars must be formed in double: float betas give (1 - beta2) off by about
    1e-5 relative, which the bit-for-bit test above would catch."""
    exact = np.float32(1.0 - 0.999)
    in_float = np.float32(1.0) - np.float32(0.999)
    assert exact != in_float
    assert abs(float(in_float) / float(exact) - 1.0) > 1e-6


@pytest.mark.parametrize(
    ("momentum", "weight_decay", "clip"),
    [(0.0, 0.0, 0.0), (0.9, 0.0, 0.0), (0.9, 1e-3, 0.0), (0.0, 5e-4, 0.5), (0.5, 0.0, 0.5)],
    ids=["plain", "momentum", "momentum-decay", "decay-clip", "momentum-clip"],
)
def test_the_gpu_sgd_rule_is_the_cpus_bit_for_bit(
    rng: np.random.Generator, momentum: float, weight_decay: float, clip: float
) -> None:
    module = cuda_module()
    p0, grads = _adam_case(rng, 777)
    cpu_p = p0.copy()
    opt = optim.SGD({"w": cpu_p}, 0.05, momentum=momentum, weight_decay=weight_decay)
    gpu_p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for step, g in enumerate(grads, start=1):
        g_cpu = {"w": g.copy()}
        norm = optim.clip_grad_norm(g_cpu, clip) if clip > 0 else 0.0
        opt.step(g_cpu)
        module.host_update(
            gpu_p,
            g,
            m,
            v,
            "sgd",
            0.05,
            momentum,
            weight_decay,
            0.9,
            0.999,
            1e-8,
            clip,
            norm,
            step,
            step == 1,
        )
        np.testing.assert_array_equal(gpu_p, cpu_p)
        if momentum:
            np.testing.assert_array_equal(m, opt.state["momentum:w"])


def test_the_host_update_checks_its_arguments() -> None:
    module = cuda_module()
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="optimizer: expected adam, adamw or sgd"):
        module.host_update(p, p, p, p, "rmsprop", 1e-3, 0, 0, 0.9, 0.999, 1e-8, 0, 0, 1, True)
    with pytest.raises(ValueError, match="adam: hyperparameters must be finite"):
        module.host_update(p, p, p, p, "adam", float("nan"), 0, 0, 0.9, 0.999, 1e-8, 0, 0, 1, True)
    with pytest.raises(ValueError, match="g: expected shape"):
        module.host_update(
            p, np.zeros(4, np.float32), p, p, "sgd", 1e-3, 0, 0, 0.9, 0.999, 1e-8, 0, 0, 1, True
        )


# ---- the ops on the GPU ----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
def test_gpu_matches_reference(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: Any
) -> None:
    p = make_problem(rng, *shape, dtype=dtype)
    *out, ctx = ops.lstm_forward(*p.inputs(), device="cuda")
    got = [*out, *ops.lstm_backward(ctx, *p.grads())]
    *want, rctx = ref.lstm_forward(*p.inputs())
    want = [*want, *ref.lstm_backward(rctx, *p.grads())]
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape",
    [(0, 3, 4, 5), (3, 0, 4, 5), (3, 2, 4, 0), (3, 2, 0, 5), (1, 1, 1, 1)],
    ids=["T0", "B0", "H0", "I0", "T1B1"],
)
def test_gpu_zero_sizes_match_the_cpu(rng: np.random.Generator, shape: tuple[int, ...]) -> None:
    p = make_problem(rng, *shape)
    *gpu_out, gctx = ops.lstm_forward(*p.inputs(), device="cuda")
    *cpu_out, cctx = ops.lstm_forward(*p.inputs())
    gpu_out += ops.lstm_backward(gctx, *p.grads())
    cpu_out += ops.lstm_backward(cctx, *p.grads())
    for a, b in zip(gpu_out, cpu_out, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert rel_err(a, b) <= 1e-10


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_gpu_none_states_and_gradients_mean_zeros(rng: np.random.Generator, dtype: Any) -> None:
    p = make_problem(rng, 6, 5, 4, 37, dtype=dtype)
    x, _, _, w_ih, w_hh, bias = p.inputs()
    y, h_n, c_n, ctx = ops.lstm_forward(x, None, None, w_ih, w_hh, bias, device="cuda")
    zeros = np.zeros_like(p.h0)
    ry, rh, rc, rctx = ref.lstm_forward(x, zeros, zeros, w_ih, w_hh, bias)
    for a, b in ((y, ry), (h_n, rh), (c_n, rc)):
        assert rel_err(a, b) <= TOL[dtype]
    for dy, dh_n, dc_n in ((p.dy, None, None), (None, p.dh_n, None), (None, None, p.dc_n)):
        got = ops.lstm_backward(ctx, dy, dh_n, dc_n)
        want = ref.lstm_backward(
            rctx,
            np.zeros_like(p.dy) if dy is None else dy,
            zeros if dh_n is None else dh_n,
            zeros if dc_n is None else dc_n,
        )
        for a, b in zip(got, want, strict=True):
            assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.gpu
def test_gpu_need_dx_false_and_need_y_false(rng: np.random.Generator) -> None:
    p = make_problem(rng, 5, 3, 6, 40)
    y, h_n, c_n, ctx = ops.lstm_forward(*p.inputs(), device="cuda", need_y=False)
    assert y is None
    dx, *rest = ops.lstm_backward(ctx, None, p.dh_n, p.dc_n, need_dx=False)
    assert dx is None
    *want, rctx = ref.lstm_forward(*p.inputs())
    assert rel_err(h_n, want[1]) <= 1e-10 and rel_err(c_n, want[2]) <= 1e-10
    ref_grads = ref.lstm_backward(rctx, np.zeros_like(p.dy), p.dh_n, p.dc_n)
    for a, b in zip(rest, ref_grads[1:], strict=True):
        assert rel_err(a, b) <= 1e-10


@pytest.mark.gpu
def test_gpu_reuse_overwrites_the_same_context(rng: np.random.Generator) -> None:
    """reuse= keeps the device buffers with the context (nn.LSTM passes each layer's previous
    context: one set of buffers per model); the older LstmContext is then stale."""
    p, q = make_problem(rng, 4, 3, 5, 9), make_problem(rng, 4, 3, 5, 9)
    *_, first = ops.lstm_forward(*p.inputs(), device="cuda")
    y, _, _, second = ops.lstm_forward(*q.inputs(), device="cuda", reuse=first)
    assert second.native is first.native
    with pytest.raises(ValueError, match="stale"):
        ops.lstm_backward(first, *p.grads())
    *want, rctx = ref.lstm_forward(*q.inputs())
    assert rel_err(y, want[0]) <= 1e-10
    for a, b in zip(
        ops.lstm_backward(second, *q.grads()), ref.lstm_backward(rctx, *q.grads()), strict=True
    ):
        assert rel_err(a, b) <= 1e-10
    other = make_problem(rng, 4, 2, 5, 9)  # another shape: a fresh context, the old one kept
    *_, third = ops.lstm_forward(*other.inputs(), device="cuda", reuse=second)
    assert third.native is not second.native


@pytest.mark.gpu
def test_gpu_nn_lstm_keeps_its_buffers(rng: np.random.Generator) -> None:
    layer = LSTM(5, 12, device="cuda", rng=rng)
    x = rng.standard_normal((4, 3, 5)).astype(np.float32)
    layer.forward(x)
    native = layer._ctx[0].native if layer._ctx[0] is not None else None
    layer.forward(x)
    assert layer._ctx[0] is not None and layer._ctx[0].native is native


@pytest.mark.gpu
def test_gpu_results_are_deterministic(rng: np.random.Generator) -> None:
    """No atomics anywhere: the same inputs give the same bits (the bias gradient is the
    two-level column sum)."""
    p = make_problem(rng, 300, 4, 3, 20, dtype=np.float32)
    runs = []
    for _ in range(2):
        *out, ctx = ops.lstm_forward(*p.inputs(), device="cuda")
        runs.append([*out, *ops.lstm_backward(ctx, *p.grads())])
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)
