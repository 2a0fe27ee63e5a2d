"""Every ISA path of the CPU kernels that this CPU runs, against the NumPy reference.

The kernels are compiled once per instruction set (avx512, avx2, generic); ``_core.set_isa``
switches between them at run time, so one process checks them all. Paths the CPU lacks are
skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

import lstmcore
from helpers import make_lengths, make_problem, rel_err
from lstmcore import ops, reference
from lstmcore._native import core as _core

PATHS = ["avx512", "avx2", "generic"]
TOL = {np.float32: 1e-5, np.float64: 1e-10}


@pytest.fixture(params=PATHS)
def isa(request: pytest.FixtureRequest) -> Iterator[str]:
    name = request.param
    ok, why = _core.isa_supported(name)
    if not ok:
        pytest.skip(f"{name}: {why}")
    before = _core.isa()
    _core.set_isa(name)
    try:
        yield name
    finally:
        _core.set_isa(before)


def test_isa_names_the_path_running(isa: str) -> None:
    assert lstmcore.isa() == isa


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("steps", "batch", "inp", "hidden"),
    [(1, 1, 1, 7), (5, 3, 4, 33), (7, 9, 5, 17), (4, 6, 3, 40), (3, 2, 28, 128)],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_path_matches_reference(
    isa: str,
    dtype: type,
    steps: int,
    batch: int,
    inp: int,
    hidden: int,
    threads: int,
    rng: np.random.Generator,
) -> None:
    p = make_problem(rng, steps, batch, inp, hidden, dtype=dtype)
    lstmcore.set_num_threads(threads)
    try:
        y, h_n, c_n, ctx = ops.lstm_forward(*p.inputs())
        grads = ops.lstm_backward(ctx, *p.grads())
    finally:
        lstmcore.set_num_threads(lstmcore._default_threads())
    r_y, r_h, r_c, r_ctx = reference.lstm_forward(*p.inputs())
    r_grads = reference.lstm_backward(r_ctx, *p.grads())
    tol = TOL[dtype]
    for name, a, b in zip(
        ["y", "h_n", "c_n", "dx", "dh0", "dc0", "dw_ih", "dw_hh", "dbias"],
        [y, h_n, c_n, *grads],
        [r_y, r_h, r_c, *r_grads],
        strict=True,
    ):
        assert a.dtype == dtype, name
        assert rel_err(a, b) <= tol, (isa, name, rel_err(a, b))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", ["mixed", "ones"])
def test_path_reverse_and_lengths(
    isa: str, dtype: type, reverse: bool, kind: str, rng: np.random.Generator
) -> None:
    steps, batch, inp, hidden = 6, 11, 4, 21
    p = make_problem(rng, steps, batch, inp, hidden, dtype=dtype)
    lengths = make_lengths(rng, kind, steps, batch)
    y, h_n, c_n, ctx = ops.lstm_forward(*p.inputs(), reverse=reverse, lengths=lengths)
    grads = ops.lstm_backward(ctx, *p.grads())
    r_y, r_h, r_c, r_ctx = reference.lstm_forward(*p.inputs(), reverse=reverse, lengths=lengths)
    r_grads = reference.lstm_backward(r_ctx, *p.grads())
    for a, b in zip([y, h_n, c_n, *grads], [r_y, r_h, r_c, *r_grads], strict=True):
        assert rel_err(a, b) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_mode_writes_the_same_states(
    isa: str, dtype: type, rng: np.random.Generator
) -> None:
    p = make_problem(rng, 5, 6, 3, 19, dtype=dtype)
    y, h_n, c_n, _ = _core.forward(*p.inputs())
    y2, h2, c2, ctx = _core.forward(*p.inputs(), need_cache=False)
    # the same kernel and operations: identical bits, only the gates are not stored
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(h2, h_n)
    np.testing.assert_array_equal(c2, c_n)
    with pytest.raises(ValueError, match="need_cache=False"):
        _core.backward(ctx, None, None, None)


def test_unsupported_or_unknown_path_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ISA path"):
        _core.set_isa("sse9")
    for name in PATHS:
        ok, _ = _core.isa_supported(name)
        if not ok:
            with pytest.raises(ValueError, match=name):
                _core.set_isa(name)


def _run(code: str, env_isa: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LSTMCORE_ISA=env_isa)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.subprocess
def test_environment_forces_a_path() -> None:
    done = _run("import lstmcore; print(lstmcore.isa())", "generic")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "generic"


@pytest.mark.subprocess
def test_environment_naming_a_bad_path_fails_at_import_with_the_reason() -> None:
    done = _run("import lstmcore", "avx9000")
    assert done.returncode != 0
    assert "LSTMCORE_ISA=avx9000" in done.stderr
    assert "unknown ISA path" in done.stderr
