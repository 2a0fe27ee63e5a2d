"""The IDX reader, the bundled MNIST, and the downloader against a local HTTP server."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lstmcore.mnist import data
from lstmcore.mnist.data import DataError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write(path: Path, payload: bytes, compress: bool) -> Path:
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


def test_bundled_mnist_loads_with_the_published_shapes_and_counts(mnist: data.MnistData) -> None:
    assert mnist.train_images.shape == (60000, 28, 28)
    assert mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == np.float32
    assert 0.0 <= mnist.train_images.min() and mnist.train_images.max() == 1.0
    assert np.bincount(mnist.train_labels).tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test_labels).tolist() == TEST_COUNTS
    assert mnist.num_classes == 10


def test_bundled_files_match_their_recorded_checksums() -> None:
    for name, digest in data.MNIST_FILES.items():
        raw = gzip.decompress((data.bundled_dir() / f"{name}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest


def test_bundled_pixels_are_bytes_over_255() -> None:
    """The one-pass conversion gives exactly uint8 -> float32 then / 255 in float32."""
    mnist = data.load_mnist()
    raw = data.read_idx(data.bundled_dir() / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(mnist.test_images, raw.astype(np.float32) / np.float32(255))


@pytest.mark.slow
def test_a_changed_bundled_file_fails_its_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One flipped pixel in a well-formed copy of the bundled set is caught (the checksum is
    computed while the file is read)."""
    for name in data.MNIST_FILES:
        shutil.copy(data.bundled_dir() / f"{name}.gz", tmp_path / f"{name}.gz")
    raw = bytearray(gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[5000] ^= 0xFF
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr(data, "bundled_dir", lambda: tmp_path)
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        data.load_mnist()


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize(
    ("code", "dtype"),
    [(0x08, np.uint8), (0x09, np.int8), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")],
)
def test_read_idx_round_trips_every_type(
    rng: np.random.Generator, tmp_path: Path, compress: bool, code: int, dtype: str
) -> None:
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = write(tmp_path / "f", idx_bytes(array, code), compress)
    got = data.read_idx(path)
    np.testing.assert_array_equal(got, array)
    assert got.dtype.isnative


def bad_files(rng: np.random.Generator) -> dict[str, tuple[bytes, str]]:
    good = idx_bytes(rng.integers(0, 255, (4, 3, 3), dtype=np.uint8))
    return {
        "truncated data": (good[:-5], "truncated data"),
        "truncated header": (good[:10], "truncated header"),
        "empty": (b"", "truncated header"),
        "wrong magic": (b"\x01\x02" + good[2:], "not an IDX file"),
        "wrong type": (good[:2] + b"\x07" + good[3:], "unknown IDX type code 0x07"),
        "extra bytes": (good + b"\x00" * 3, "more data than the header"),
        "huge declared size": (
            bytes([0, 0, 8, 3]) + np.array([2**31, 2**31, 2**31], ">u4").tobytes() + b"\x00" * 100,
            "too large to represent",
        ),
        "large declared size": (
            bytes([0, 0, 8, 2]) + np.array([2**20, 2**20], ">u4").tobytes() + b"\x00" * 100,
            "more than the reader's limit",
        ),
        "declared size within the limit": (
            bytes([0, 0, 8, 2]) + np.array([2**14, 2**14], ">u4").tobytes() + b"\x00" * 100,
            "truncated data",
        ),
    }


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("case", list(bad_files(np.random.default_rng(0))))
def test_read_idx_rejects_bad_files_naming_them(
    rng: np.random.Generator, tmp_path: Path, compress: bool, case: str
) -> None:
    payload, message = bad_files(rng)[case]
    path = write(tmp_path / "bad-file", payload, compress)
    with pytest.raises(DataError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_holds_the_data_once(tmp_path: Path) -> None:
    """A 64 MiB image file (a small gzip of zeros) peaks at about 64 MiB of Python/NumPy
    allocations, not twice that (no list of chunks joined, no copy for the byte order)."""
    import tracemalloc

    n = 64 << 20
    for code, dtype in ((0x08, np.uint8), (0x0D, ">f4")):
        header = bytes([0, 0, code, 1]) + np.array([n // np.dtype(dtype).itemsize], ">u4").tobytes()
        path = write(tmp_path / f"big-{code}.gz", header + bytes(n), compress=True)
        tracemalloc.start()
        try:
            got = data.read_idx(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert got.nbytes == n and got.dtype.isnative and not got.any()
        assert peak < 1.2 * n, f"type 0x{code:02x}: peak {peak / n:.2f} x the data"


def test_read_idx_limit_is_stated_and_names_the_file(tmp_path: Path) -> None:
    declared = data.MAX_IDX_BYTES + 1
    header = bytes([0, 0, 8, 1]) + np.array([declared], ">u4").tobytes()
    path = write(tmp_path / "huge", header, compress=False)
    with pytest.raises(DataError, match=rf"{declared} bytes.*limit of {data.MAX_IDX_BYTES}"):
        data.read_idx(path)


def test_read_idx_rejects_corrupt_and_truncated_gzip(
    rng: np.random.Generator, tmp_path: Path
) -> None:
    packed = gzip.compress(idx_bytes(rng.integers(0, 255, (50, 28, 28), dtype=np.uint8)))
    corrupt = bytearray(packed)
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 16] = b"\xff" * 16
    for name, payload in {
        "corrupt.gz": bytes(corrupt),
        "cut.gz": packed[: len(packed) // 2],
    }.items():
        path = tmp_path / name
        path.write_bytes(payload)
        with pytest.raises(DataError) as info:
            data.read_idx(path)
        assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found"):
        data.read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        data.load_mnist(tmp_path)


def write_dataset(
    directory: Path,
    rng: np.random.Generator,
    n_train: int = 30,
    n_test: int = 10,
    n_train_labels: int | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train_labels or n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in files.items():
        write(directory / f"{name}.gz", idx_bytes(array), compress=True)


def test_data_dir_loads_any_mnist_format_set(rng: np.random.Generator, tmp_path: Path) -> None:
    write_dataset(tmp_path, rng)
    got = data.load_mnist(tmp_path)
    assert got.train_images.shape == (30, 28, 28) and got.test_labels.shape == (10,)
    raw = data.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(got.train_images, raw.astype(np.float32) / 255)


def test_image_and_label_counts_must_agree(rng: np.random.Generator, tmp_path: Path) -> None:
    write_dataset(tmp_path, rng, n_train_labels=29)
    with pytest.raises(DataError, match="29 labels for 30 images"):
        data.load_mnist(tmp_path)


# ---- download -----------------------------------------------------------------------------------

FILES = {"alpha": b"alpha file " * 5000, "beta": b"beta file " * 7000}


# what the server sends, compressed once per test session (the 47 MB of MNIST took 41 s of the
# suite when recompressed per request): "good" and "corrupt" bodies by file name
SERVED: dict[str, dict[str, bytes]] = {"good": {}, "corrupt": {}}


def serve(name: str, content: bytes, corrupt: bytes | None = None) -> None:
    SERVED["good"][name] = gzip.compress(content, compresslevel=1)
    SERVED["corrupt"][name] = gzip.compress(content[::-1] if corrupt is None else corrupt, 1)


for _name, _content in FILES.items():
    serve(_name, _content)


class Handler(http.server.BaseHTTPRequestHandler):
    """/good/NAME.gz serves the file; /corrupt/ wrong bytes; /cut/ half, then hangs up."""

    def do_GET(self) -> None:
        mode, _, name = self.path.strip("/").partition("/")
        key = name.removesuffix(".gz")
        if key not in SERVED["good"] or mode not in ("good", "corrupt", "cut"):
            self.send_error(404)
            return
        body = SERVED["corrupt" if mode == "corrupt" else "good"][key]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


CHECKSUMS = {k: hashlib.sha256(v).hexdigest() for k, v in FILES.items()}


def test_download_good_mirror(server: str, tmp_path: Path) -> None:
    data.download(tmp_path, mirrors=[f"{server}/good/"], files=CHECKSUMS, timeout=10)
    for name, content in FILES.items():
        assert gzip.decompress((tmp_path / f"{name}.gz").read_bytes()) == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.gz", "beta.gz"]


@pytest.mark.parametrize("bad", ["corrupt", "cut", "missing"])
def test_download_rejects_a_bad_mirror_and_tries_the_next(
    server: str, tmp_path: Path, bad: str
) -> None:
    logged: list[str] = []
    data.download(
        tmp_path,
        mirrors=[f"{server}/{bad}/", f"{server}/good/"],
        files=CHECKSUMS,
        timeout=10,
        log=logged.append,
    )
    assert len(logged) == 2  # one failure per file, then the good mirror
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alpha.gz", "beta.gz"]


@pytest.mark.parametrize("bad", ["corrupt", "cut"])
def test_download_with_only_bad_mirrors_leaves_nothing(
    server: str, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(DataError, match="every mirror failed"):
        data.download(tmp_path, mirrors=[f"{server}/{bad}/"], files=CHECKSUMS, timeout=10)
    assert list(tmp_path.iterdir()) == []


def serve_bundled_mnist() -> list[str]:
    """The real MNIST names and checksums, served as the bundled .gz files are (no
    recompression); returns the names."""
    for n in data.MNIST_FILES:
        packed = (data.bundled_dir() / f"{n}.gz").read_bytes()
        SERVED["good"][n] = packed
        SERVED["corrupt"][n] = packed[:-20] + bytes(20)
    return list(data.MNIST_FILES)


@pytest.mark.slow
def test_load_mnist_downloads_missing_files_into_the_data_dir(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--data-dir DIR --download: the missing files are fetched into DIR itself; --download
    alone: into the cache directory."""
    bundled = serve_bundled_mnist()
    try:
        target = tmp_path / "mnist"
        got = data.load_mnist(
            target, download_missing=True, mirrors=[f"{server}/cut/", f"{server}/good/"]
        )
        assert got.train_images.shape == (60000, 28, 28)
        assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in bundled)
        # a partial MNIST directory is completed in place; without a data dir, the cache
        # directory ($LSTMCORE_DATA here) is the one completed
        (target / "t10k-labels-idx1-ubyte.gz").unlink()
        monkeypatch.setenv("LSTMCORE_DATA", str(target))
        got = data.load_mnist(None, download_missing=True, mirrors=[f"{server}/good/"])
        assert (target / "t10k-labels-idx1-ubyte.gz").is_file()
        assert got.test_labels.shape == (10000,)
    finally:
        for n in bundled:
            SERVED["good"].pop(n)
            SERVED["corrupt"].pop(n)


def test_download_never_mixes_mnist_into_another_data_set(
    server: str, rng: np.random.Generator, tmp_path: Path
) -> None:
    """A Fashion-MNIST-like directory with a file missing is refused, naming a foreign file;
    nothing is fetched and the directory is unchanged."""
    write_dataset(tmp_path, rng)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: not the published MNIST"):
        data.load_mnist(tmp_path, download_missing=True, mirrors=[f"{server}/good/"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cache_dir_follows_lstmcore_data_then_the_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LSTMCORE_DATA", str(tmp_path / "mine"))
    assert data.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LSTMCORE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "lstmcore"
