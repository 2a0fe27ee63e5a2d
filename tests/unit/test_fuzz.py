"""Property-based attacks on the IDX reader and the binding boundary (hypothesis).

Every generated case must end in the documented exception (DataError / ValueError) or a correct
result: never a crash, a hang or a MemoryError. Case counts per run are stated in each
@settings; together the IDX targets generate 2,600 cases per run.
"""

from __future__ import annotations

import gzip
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import rel_err, shifted_image
from lstmcore import ops
from lstmcore import reference as ref
from lstmcore.mnist import data

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPE_CODES = [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]
ITEM = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def read_bytes_as_idx(directory: Path, payload: bytes) -> np.ndarray | None:
    """Reads payload through read_idx; returns the array, or None after a DataError that
    names the file."""
    path = directory / "case.idx"
    path.write_bytes(payload)
    try:
        return data.read_idx(path)
    except data.DataError as err:
        assert str(path) in str(err)
        return None


@settings(FUZZ, max_examples=1000)
@given(payload=st.binary(max_size=400))
def test_random_bytes(scratch: Path, payload: bytes) -> None:
    read_bytes_as_idx(scratch, payload)


@pytest.mark.slow
@settings(FUZZ, max_examples=1000)
@given(
    code=st.sampled_from(TYPE_CODES),
    dims=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=4),
    extra=st.integers(-64, 64),
    compress=st.booleans(),
)
def test_headers_whose_sizes_disagree_with_the_bytes(
    scratch: Path, code: int, dims: list[int], extra: int, compress: bool
) -> None:
    """Valid headers, possibly astronomically large, with about the right number of bytes."""
    declared = ITEM[code]
    for n in dims:
        declared *= n
    actual = max(0, min(declared, 4096) + extra)
    header = bytes([0, 0, code, len(dims)]) + np.array(dims, ">u4").tobytes()
    payload = header + bytes(actual)
    got = read_bytes_as_idx(scratch, gzip.compress(payload) if compress else payload)
    nominal = ITEM[code]
    for n in dims:
        nominal *= max(n, 1)
    if actual == declared and nominal <= sys.maxsize:
        assert got is not None and got.shape == tuple(dims)
    else:
        assert got is None


@pytest.mark.slow
@settings(FUZZ, max_examples=600)
@given(
    n=st.integers(1, 40),
    cut=st.floats(0.0, 1.0),
    flip=st.integers(0, 10_000),
    mode=st.sampled_from(["truncate", "corrupt", "bomb"]),
)
def test_gzip_streams_truncated_corrupt_or_oversized(
    scratch: Path, n: int, cut: float, flip: int, mode: str
) -> None:
    array = np.arange(n * 28 * 28, dtype=np.uint32).astype(np.uint8).reshape(n, 28, 28)
    raw = bytes([0, 0, 8, 3]) + np.array(array.shape, ">u4").tobytes() + array.tobytes()
    if mode == "bomb":
        # declares n images but decompresses to 4 MiB more: must stop after the declared size
        packed = gzip.compress(raw + bytes(4 << 20), compresslevel=1)
        assert read_bytes_as_idx(scratch, packed) is None
        return
    packed = bytearray(gzip.compress(raw))
    if mode == "truncate":
        packed = packed[: int(len(packed) * cut)]
    else:
        k = 10 + flip % max(1, len(packed) - 10)
        packed[k] ^= 0xFF
    got = read_bytes_as_idx(scratch, bytes(packed))
    if got is not None:  # a flip may hit a byte that does not matter (e.g. in the trailer)
        assert got.shape == array.shape


def test_a_gzip_bomb_is_rejected_without_decompressing_it(scratch: Path) -> None:
    header = bytes([0, 0, 8, 1]) + np.array([10], ">u4").tobytes()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    packed = compressor.compress(header + bytes(10))
    zeros = bytes(1 << 20)
    for _ in range(256):  # 256 MiB of zeros after the declared 10 bytes
        packed += compressor.compress(zeros)
    packed += compressor.flush()
    assert read_bytes_as_idx(scratch, packed) is None


# ---- the binding boundary -----------------------------------------------------------------

DTYPES = [np.float32, np.float64, np.float16, np.int32, np.complex64, np.bool_, object]
LAYOUTS = ["c", "fortran", "reversed", "strided", "readonly"]


def laid_out(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "reversed":
        return np.flip(np.flip(array).copy()) if array.ndim else array
    if layout == "strided" and array.ndim:
        big = np.repeat(array, 2, axis=-1)
        return big[..., ::2]
    if layout == "readonly":
        array = array.copy()
        array.flags.writeable = False
    return array


@st.composite
def argument(draw: Any, shape: tuple[int, ...], rng_seed: int) -> Any:
    """Mostly the right array; sometimes a wrong shape, dtype, ndim, None or a non-array."""
    kind = draw(st.sampled_from(["good"] * 6 + ["shape", "dtype", "zero-d", "list", "none"]))
    dtype = draw(st.sampled_from(DTYPES)) if kind == "dtype" else None
    if kind == "shape":
        shape = tuple(max(0, n + draw(st.integers(-2, 2))) for n in shape) + tuple(
            draw(st.lists(st.integers(1, 3), max_size=1))
        )
    rng = np.random.default_rng(rng_seed)
    if kind == "zero-d":
        return np.float32(rng.standard_normal())
    if kind == "list":
        return rng.standard_normal(shape).tolist()
    if kind == "none":
        return None
    base = rng.uniform(-0.5, 0.5, shape)
    if dtype is object:
        value = base.astype(object)
    elif dtype is not None:
        value = base.astype(dtype)
    else:
        value = base
    return (kind, laid_out(value, draw(st.sampled_from(LAYOUTS))))


def consistent(args: dict[str, Any]) -> bool:
    """The oracle: True exactly when the arguments form a valid call (dims from x and w_hh)."""
    x, w_hh = args["x"], args["w_hh"]
    arrays = {k: v for k, v in args.items() if v is not None}
    if set(args) - set(arrays) - {"h0", "c0"}:
        return False
    if not all(isinstance(v, np.ndarray) and v.ndim > 0 for v in arrays.values()):
        return False
    dtypes = {v.dtype for v in arrays.values()}
    if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64):
        return False
    if x.ndim != 3 or w_hh.ndim != 2:
        return False
    _, batch, inp = x.shape
    hidden = w_hh.shape[1]
    want = {
        "h0": (batch, hidden),
        "c0": (batch, hidden),
        "w_ih": (4 * hidden, inp),
        "w_hh": (4 * hidden, hidden),
        "bias": (4 * hidden,),
    }
    return all(arrays[k].shape == shape for k, shape in want.items() if k in arrays)


@settings(FUZZ, max_examples=400)
@given(st.data())
def test_forward_backward_boundary(case: st.DataObject) -> None:
    steps, batch, inp, hidden = (case.draw(st.integers(0, 4)) for _ in range(4))
    dtype = case.draw(st.sampled_from([np.float32, np.float64]))
    shapes = {
        "x": (steps, batch, inp),
        "h0": (batch, hidden),
        "c0": (batch, hidden),
        "w_ih": (4 * hidden, inp),
        "w_hh": (4 * hidden, hidden),
        "bias": (4 * hidden,),
    }
    args: dict[str, Any] = {}
    for k, (name, shape) in enumerate(shapes.items()):
        drawn = case.draw(argument(shape, k))
        if isinstance(drawn, tuple):
            kind, value = drawn
            args[name] = value.astype(dtype, copy=False) if kind == "good" else value
        else:
            args[name] = drawn
    if not consistent(args):
        with pytest.raises(ValueError):
            ops.lstm_forward(**args)
        return
    y, h_n, c_n, ctx = ops.lstm_forward(**args)
    want = ref.lstm_forward(**args)
    tol = 1e-5 if args["x"].dtype == np.float32 else 1e-10
    for got, expected in zip((y, h_n, c_n), want[:3], strict=True):
        assert got.shape == expected.shape
        assert rel_err(got, expected) <= tol
    grads = ops.lstm_backward(ctx, None, np.ones_like(h_n), None)
    want_grads = ref.lstm_backward(want[3], None, np.ones_like(h_n), None)
    for got, expected in zip(grads, want_grads, strict=True):
        assert rel_err(got, expected) <= tol


@pytest.mark.parametrize(
    ("x_shape", "hidden"),
    [
        ((2**16, 2**16, 1), 1),
        ((1, 2**31, 1), 1),
        ((2, 3, 2**31), 1),
        ((1, 1, 1), 2**15),
    ],
)
def test_sizes_that_overflow_are_refused_before_any_allocation(
    x_shape: tuple[int, int, int], hidden: int
) -> None:
    # zero-stride views: the shapes are huge, the memory is one element
    x = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), x_shape, (0, 0, 0))
    w_ih = np.lib.stride_tricks.as_strided(
        np.zeros(1, np.float32), (4 * hidden, x_shape[2]), (0, 0)
    )
    w_hh = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (4 * hidden, hidden), (0, 0))
    bias = np.zeros(4 * hidden, np.float32)
    with pytest.raises(ValueError, match="overflows the 32-bit sizes"):
        ops.lstm_forward(x, None, None, w_ih, w_hh, bias)


def moved_reference(images: np.ndarray, idx: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> Any:
    """shifted_batch's contract, time-major (R, B, C), from the plain per-image reference (the
    moves as Python integers: they may be int64's extremes, where int64 arithmetic wraps)."""
    _, rows, cols = images.shape
    out = np.zeros((rows, len(idx), cols), dtype=images.dtype)
    for b, (k, down, right) in enumerate(zip(idx.tolist(), dy.tolist(), dx.tolist(), strict=True)):
        out[:, b, :] = shifted_image(images[k], down, right)
    return out


@settings(FUZZ, max_examples=300)
@given(st.data())
def test_shifted_batch_against_its_contract(case: st.DataObject) -> None:
    """Any sizes (zero included), any moves (past the image, int64's extremes), any indices:
    the documented batch, or a ValueError naming the index that is out of range."""
    n = case.draw(st.integers(0, 5), label="N")
    rows, cols = case.draw(st.integers(0, 6), label="R"), case.draw(st.integers(0, 6), label="C")
    batch = case.draw(st.integers(0, 6), label="B")
    moves = st.one_of(st.integers(-8, 8), st.sampled_from([2**63 - 1, -(2**63)]))
    idx = np.array(case.draw(st.lists(st.integers(-2, n + 1), min_size=batch, max_size=batch)))
    dy = np.array(case.draw(st.lists(moves, min_size=batch, max_size=batch)), dtype=np.int64)
    dx = np.array(case.draw(st.lists(moves, min_size=batch, max_size=batch)), dtype=np.int64)
    dtype = case.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    images = np.random.default_rng(n * 100 + rows * 10 + cols).random((n, rows, cols)).astype(dtype)
    from lstmcore._native import core

    idx = idx.astype(np.int64)
    if batch and (idx.min() < 0 or idx.max() >= n):
        with pytest.raises(ValueError, match=r"idx: -?\d+ at position \d+ is outside"):
            core.shifted_batch(images, idx, dy, dx)
        return
    got = core.shifted_batch(images, idx, dy, dx)
    np.testing.assert_array_equal(got, moved_reference(images, idx, dy, dx))


def test_shifted_batch_of_empty_images_returns_at_once() -> None:
    """Zero columns allow any number of rows in an empty array: nothing to write, no loop."""
    from lstmcore._native import core

    images = np.empty((1, 2**40, 0), dtype=np.float32)
    zeros = np.zeros(4, dtype=np.int64)
    out = core.shifted_batch(images, zeros, zeros, zeros)
    assert out.shape == (2**40, 4, 0)
