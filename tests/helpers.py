"""Shared helpers for the tests: seeded random LSTM problems and the error measure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
from numpy.typing import NDArray

# the checkout's root: tests/ sits right under it, the test files one folder deeper
REPO = Path(__file__).resolve().parent.parent

Array = NDArray[Any]


def rel_err(a: Array, b: Array) -> float:
    """``norm(a - b) / norm(b)``, the error measure the project's tolerances are stated in."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    denom = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    if denom == 0.0:
        return float(num)
    return float(num / denom)


@dataclass
class Problem:
    """One random LSTM problem: inputs, weights and upstream gradients."""

    x: Array
    h0: Array
    c0: Array
    w_ih: Array
    w_hh: Array
    bias: Array
    dy: Array
    dh_n: Array
    dc_n: Array

    def inputs(self) -> tuple[Array, Array, Array, Array, Array, Array]:
        return self.x, self.h0, self.c0, self.w_ih, self.w_hh, self.bias

    def grads(self) -> tuple[Array, Array, Array]:
        return self.dy, self.dh_n, self.dc_n


def make_problem(
    rng: np.random.Generator,
    steps: int,
    batch: int,
    inp: int,
    hidden: int,
    dtype: Any = np.float64,
    scale: float = 1.0,
) -> Problem:
    """Weights uniform in +-1/sqrt(H) as torch.nn.LSTM initialises them (times ``scale``)."""
    bound = scale / np.sqrt(max(hidden, 1))

    def normal(*shape: int) -> Array:
        return rng.standard_normal(shape).astype(dtype)

    def uniform(*shape: int) -> Array:
        return rng.uniform(-bound, bound, shape).astype(dtype)

    return Problem(
        x=normal(steps, batch, inp),
        h0=normal(batch, hidden) * dtype(0.5),
        c0=normal(batch, hidden) * dtype(0.5),
        w_ih=uniform(4 * hidden, inp),
        w_hh=uniform(4 * hidden, hidden),
        bias=uniform(4 * hidden),
        dy=normal(steps, batch, hidden),
        dh_n=normal(batch, hidden),
        dc_n=normal(batch, hidden),
    )


def numeric_grad(f: Callable[[], float], arr: Array, eps: float = 1e-6) -> Array:
    """Central finite differences of ``f()`` w.r.t. every element of ``arr`` (changed in place
    and restored)."""
    grad = np.zeros_like(arr)
    flat, out = arr.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        out[k] = (up - down) / (2 * eps)
    return grad


def make_stack_params(
    rng: np.random.Generator,
    inp: int,
    hidden: int,
    num_layers: int,
    bidirectional: bool,
    dtype: Any = np.float64,
    scale: float = 1.0,
) -> dict[str, Array]:
    """torch.nn.LSTM's parameters under its state_dict names, uniform in +-scale/sqrt(H)."""
    from lstmcore.reference import param_names

    bound = scale / np.sqrt(hidden)
    dirs = 2 if bidirectional else 1
    shapes = {
        "weight_ih": lambda layer: (4 * hidden, inp if layer == 0 else dirs * hidden),
        "weight_hh": lambda layer: (4 * hidden, hidden),
        "bias_ih": lambda layer: (4 * hidden,),
        "bias_hh": lambda layer: (4 * hidden,),
    }
    out = {}
    for name in param_names(num_layers, bidirectional):
        kind, layer = name.split("_l")[0], int(name.split("_l")[1].split("_")[0])
        out[name] = rng.uniform(-bound, bound, shapes[kind](layer)).astype(dtype)
    return out


def make_lengths(rng: np.random.Generator, kind: str, steps: int, batch: int) -> Array | None:
    """``none``; ``equal`` (all T, given explicitly); ``mixed`` (random in [1, T], shuffled,
    with T and 1 present when the batch allows); ``ones`` (all 1)."""
    if kind == "none":
        return None
    if kind == "equal":
        return np.full(batch, steps, dtype=np.int64)
    if kind == "ones":
        return np.ones(batch, dtype=np.int64)
    assert kind == "mixed", kind
    lengths = rng.integers(1, steps + 1, batch)
    lengths[0] = steps  # the longest and the shortest both present, at random positions
    if batch > 1:
        lengths[1] = 1
    return rng.permutation(lengths)


def shifted_image(img: Array, dy: int, dx: int) -> Array:
    """img moved down by dy and right by dx, zeros coming in: the plain reference of the
    trainer's shifts (Python integers, so moves of any size are exact)."""
    out = np.zeros_like(img)
    rows, cols = img.shape
    for y in range(rows):
        for x in range(cols):
            if 0 <= y - dy < rows and 0 <= x - dx < cols:
                out[y, x] = img[y - dy, x - dx]
    return out


# ---- the GPU -------------------------------------------------------------------------------------

REQUIRE_GPU = os.environ.get("LSTMCORE_REQUIRE_GPU", "") == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """pytest.skip, or with LSTMCORE_REQUIRE_GPU=1 a failure with the same reason."""
    if REQUIRE_GPU:
        pytest.fail(f"LSTMCORE_REQUIRE_GPU=1 and this test cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def cuda_module() -> Any:
    """lstmcore._cuda where it was built and loads (no GPU needed), else skip saying why."""
    from lstmcore import cuda

    try:
        return cuda.load_module()
    except ImportError as err:
        skip_or_fail(f"lstmcore._cuda does not load here: {err}")


# ---- processes -----------------------------------------------------------------------------------


def run_module(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in a fresh interpreter (this one's), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
