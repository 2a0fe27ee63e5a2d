"""MNIST-format data: an IDX reader, the bundled MNIST files, and a verified downloader.

Every failure to read a file raises :class:`DataError` (a ValueError) naming the file and what
is wrong with it; nothing is ever half-loaded. A header's sizes bound what is read: no more than
the declared bytes are ever decompressed, headers declaring more than ``MAX_IDX_BYTES`` are
refused, and the data is read in bounded chunks into one buffer (memory grows with the bytes
actually found, and the data is held once). Only regular files are read (a FIFO or device is
refused by name, never read), and labels must lie in ``[0, MAX_CLASSES)``.

Pixels are returned as float32 in [0, 1] (``uint8 / 255``); no further normalisation.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import shutil
import sys
import urllib.request
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files

__all__ = [
    "MAX_CLASSES",
    "MAX_IDX_BYTES",
    "MIRRORS",
    "MNIST_FILES",
    "DataError",
    "MnistData",
    "bundled_dir",
    "default_cache_dir",
    "download",
    "load_mnist",
    "read_idx",
]


class DataError(ValueError):
    """A data file is missing, truncated, corrupt or inconsistent. The message names the file."""


# The four standard file names and the SHA-256 of their uncompressed bytes (the published
# MNIST; the bundled .gz files hold exactly these bytes).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# Where --download looks, in order; each serves the four names with ".gz" appended.
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

# The largest data part an IDX header may declare: 2 GiB, 40 times MNIST's training images
# (whose float32 copy is 4 times larger again). A larger header is refused, naming the file.
MAX_IDX_BYTES = 2**31

# The most classes a data set's labels may name (ImageNet's count; EMNIST has 62): the number
# of classes is the largest label + 1, and sizes the model's output and the C x C confusion
# matrix, so one forged label of 60000 would otherwise cost 27 GiB.
MAX_CLASSES = 1000


def bundled_dir() -> Path:
    """The MNIST files shipped inside the package."""
    return Path(__file__).parent / "datasets" / "mnist"


def default_cache_dir() -> Path:
    """``$LSTMCORE_DATA``, else the platform's user cache directory for lstmcore
    (``$XDG_CACHE_HOME/lstmcore``, by default ``~/.cache/lstmcore``, on Linux)."""
    env = os.environ.get("LSTMCORE_DATA")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("lstmcore", appauthor=False))


@contextmanager
def _open(path: Path) -> Iterator[io.BufferedIOBase]:
    """The file's bytes, decompressed when it starts with the gzip magic; DataError naming the
    file when it is missing or not a regular file (a FIFO, device or directory)."""
    try:
        raw = _files.open_regular(path)
    except FileNotFoundError as err:
        raise DataError(f"{path}: file not found") from err
    except _files.NotRegularFileError as err:  # its line names the file already
        raise DataError(str(err)) from err
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream
        else:
            yield raw


def _read_exact(
    stream: io.BufferedIOBase, size: int, path: Path, what: str, digest: Any = None
) -> NDArray[np.uint8]:
    """Reads exactly ``size`` bytes into one buffer, in bounded chunks: the buffer's pages are
    touched only as real data arrives, so a header that lies costs no memory. ``digest``
    (a hashlib object, or None) is updated with every byte read."""
    buf = np.empty(size, dtype=np.uint8)
    view = buf.data
    filled = 0
    while filled < size:
        got = stream.readinto(view[filled : filled + _CHUNK])
        if not got:
            raise DataError(f"{path}: truncated {what}: expected {size} bytes, found {filled}")
        if digest is not None:
            digest.update(view[filled : filled + got])
        filled += got
    return buf


def read_idx(
    path: str | os.PathLike[str], expect_dims: int | None = None, *, digest: Any = None
) -> NDArray[Any]:
    """Reads one IDX file (gzip-compressed or raw) into an array of its declared type and shape.

    Raises DataError for a missing or unreadable file (or one that is not a regular file: a
    FIFO, device or directory is never read), a bad gzip stream, a wrong magic, an
    unknown type code, too few or too many data bytes, or (with ``expect_dims``) another
    number of dimensions. ``digest`` (a hashlib object) is updated with the file's
    decompressed contents as they are read, so a checksum costs no second pass.
    """
    path = Path(path)
    try:
        with _open(path) as stream:
            header = _read_exact(stream, 4, path, "header", digest)
            if header[0] != 0 or header[1] != 0:
                raise DataError(f"{path}: not an IDX file (magic {header.tobytes().hex()})")
            type_code, ndim = int(header[2]), int(header[3])
            if type_code not in _IDX_TYPES:
                raise DataError(f"{path}: unknown IDX type code 0x{type_code:02x}")
            if expect_dims is not None and ndim != expect_dims:
                raise DataError(f"{path}: expected {expect_dims} dimensions, header says {ndim}")
            dims = _read_exact(stream, 4 * ndim, path, "header", digest)
            shape = tuple(int(v) for v in np.frombuffer(dims, ">u4"))
            dtype = _IDX_TYPES[type_code]
            count, nominal = 1, 1
            for n in shape:
                count *= n
                nominal *= max(n, 1)
            # numpy cannot even describe an (empty) array whose other dimensions overflow
            if nominal * dtype.itemsize > sys.maxsize:
                raise DataError(f"{path}: header shape {shape} is too large to represent")
            size = count * dtype.itemsize
            if size > MAX_IDX_BYTES:
                raise DataError(
                    f"{path}: header shape {shape} declares {size} bytes of data, more than "
                    f"the reader's limit of {MAX_IDX_BYTES} bytes"
                )
            data = _read_exact(stream, size, path, "data", digest)
            if stream.read(1):
                raise DataError(f"{path}: more data than the header's shape {shape} declares")
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read: {err}") from err
    array = data.view(dtype)
    if not dtype.isnative:  # swap in place: the data is never held twice
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array.reshape(shape)


@dataclass(frozen=True)
class MnistData:
    """Images as float32 in [0, 1], shape (N, rows, cols); labels as int64, shape (N,); the
    directory they were read from."""

    train_images: NDArray[np.float32]
    train_labels: NDArray[np.int64]
    test_images: NDArray[np.float32]
    test_labels: NDArray[np.int64]
    directory: Path

    @property
    def num_classes(self) -> int:
        return int(max(self.train_labels.max(initial=0), self.test_labels.max(initial=0))) + 1


def _present(directory: Path, name: str) -> Path | None:
    """The file by that name (compressed first), if any; one that is not a regular file is
    present too, so that reading it says what it is (and --download never replaces it)."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.exists():
            return candidate
    return None


def _find(directory: Path, name: str) -> Path:
    path = _present(directory, name)
    if path is None:
        raise DataError(f"{directory / name}[.gz]: file not found")
    return path


def _sha256_of_contents(path: Path, shown: Path | None = None) -> str:
    """The SHA-256 of the file's (decompressed) contents; errors name ``shown`` (default:
    ``path``), the file the user knows when ``path`` is a temporary beside it."""
    shown = path if shown is None else shown
    digest = hashlib.sha256()
    try:
        with _open(path) as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{shown}: cannot read: {err}") from err
    return digest.hexdigest()


def _check_digest(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise DataError(f"{path}: checksum mismatch (SHA-256 {actual}, expected {expected})")


def _verify(path: Path, expected: str, shown: Path | None = None) -> None:
    _check_digest(path if shown is None else shown, _sha256_of_contents(path, shown), expected)


def _read_verified(path: Path, dims: int, expected: str | None) -> NDArray[Any]:
    """read_idx, and with ``expected`` the SHA-256 of the contents read checked against it."""
    digest = hashlib.sha256() if expected is not None else None
    array = read_idx(path, expect_dims=dims, digest=digest)
    if digest is not None and expected is not None:
        _check_digest(path, digest.hexdigest(), expected)
    return array


def _check_labels(path: Path, labels: NDArray[Any], classes: int, of_what: str) -> None:
    """DataError naming the file unless every label is an integer in [0, classes)."""
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: expected integer labels, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: negative label {labels.min()}")
    if labels.size and labels.max() >= classes:
        raise DataError(f"{path}: label {labels.max()} is outside {of_what} (0..{classes - 1})")


def _load_pair(
    directory: Path,
    images_name: str,
    labels_name: str,
    checksums: Mapping[str, str] | None,
    classes: int,
    of_what: str,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The images and labels of one split, every label in [0, classes) (``of_what`` says what
    the bound is)."""
    images_path = _find(directory, images_name)
    labels_path = _find(directory, labels_name)
    images = _read_verified(images_path, 3, None if checksums is None else checksums[images_name])
    labels = _read_verified(labels_path, 1, None if checksums is None else checksums[labels_name])
    _check_labels(labels_path, labels, classes, of_what)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{labels_path}: {labels.shape[0]} labels for {images.shape[0]} images in {images_path}"
        )
    # unsigned bytes are scaled to [0, 1], converted and divided in float32 in one pass (no
    # float32 temporary of the whole set); float IDX images are taken as they are
    if images.dtype == np.uint8:
        pixels = np.divide(images, np.float32(255.0), dtype=np.float32)
    else:
        pixels = images.astype(np.float32)
    return pixels, labels.astype(np.int64)


def _refuse_foreign_files(directory: Path) -> None:
    """DataError unless every standard file already in ``directory`` is the published MNIST:
    completing another data set with MNIST's files would silently mix the two."""
    for name, expected in MNIST_FILES.items():
        path = _present(directory, name)
        if path is not None and _sha256_of_contents(path) != expected:
            raise DataError(
                f"{path}: not the published MNIST, and files are missing beside it; "
                "--download fetches only MNIST's files and would mix data sets "
                "(add the missing files, or download into an empty directory)"
            )


def load_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download_missing: bool = False,
    mirrors: Sequence[str] = MIRRORS,
    num_classes: int | None = None,
) -> MnistData:
    """Loads the four standard files.

    With no ``data_dir``: the bundled MNIST, checked against its SHA-256 sums. With a
    ``data_dir``: the four standard names (``.gz`` or raw) from there, any MNIST-format data set
    (Fashion-MNIST uses the same names). With ``download_missing``, missing files of the
    published MNIST are fetched into ``data_dir`` itself (default: :func:`default_cache_dir`)
    and verified; a directory holding some files of another data set is refused (DataError),
    never completed with MNIST's.

    Every label must lie in [0, MAX_CLASSES), or with ``num_classes`` (a trained model's) in
    [0, num_classes); DataError naming the file otherwise.
    """
    checksums: Mapping[str, str] | None = None
    if data_dir is None and not download_missing:
        directory, checksums = bundled_dir(), MNIST_FILES
    else:
        directory = Path(data_dir) if data_dir is not None else default_cache_dir()
        missing = {n: d for n, d in MNIST_FILES.items() if _present(directory, n) is None}
        if missing and download_missing:
            _refuse_foreign_files(directory)
            download(directory, mirrors=mirrors, files=missing)
            checksums = MNIST_FILES
    bound = (
        (MAX_CLASSES, f"the limit of {MAX_CLASSES} classes")
        if num_classes is None
        else (num_classes, f"the model's {num_classes} classes")
    )
    train = _load_pair(
        directory, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", checksums, *bound
    )
    test = _load_pair(
        directory, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", checksums, *bound
    )
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(
            f"{directory}: training images {train[0].shape[1:]} and test images "
            f"{test[0].shape[1:]} differ in size"
        )
    return MnistData(train[0], train[1], test[0], test[1], directory)


def _fetch(url: str, target: Path, expected: str, timeout: float) -> None:
    """Streams ``url`` to a temporary file beside ``target``, checks it, then renames it."""
    with _files.atomic_write(target) as (out, tmp):
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, _CHUNK)
        out.flush()
        _verify(tmp, expected, shown=target)  # a mismatch abandons the temporary file


def download(
    cache_dir: str | os.PathLike[str],
    *,
    mirrors: Sequence[str] = MIRRORS,
    files: Mapping[str, str] = MNIST_FILES,
    timeout: float = 30.0,
    log: Any = None,
) -> Path:
    """Fetches each missing file (``NAME.gz``) into ``cache_dir``, trying mirrors in order.

    A file is written only under its standard name, only after its SHA-256 matched, and
    atomically (temporary file, fsync, rename); nothing from the server names a file. Raises
    DataError when every mirror failed for some file.
    """
    directory = Path(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    for name, expected in files.items():
        target = directory / f"{name}.gz"
        if target.is_file():
            try:
                _verify(target, expected)
                continue
            except DataError:
                target.unlink()
        errors: list[str] = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + f"{name}.gz"
            try:
                _fetch(url, target, expected, timeout)
                break
            except (DataError, OSError, http.client.HTTPException) as err:
                errors.append(f"{url}: {err}")
                if log is not None:
                    log(f"download failed, trying the next mirror: {url}: {err}")
        else:
            raise DataError(f"{target}: every mirror failed: " + "; ".join(errors))
    return directory


def split_validation(
    images: NDArray[np.float32], labels: NDArray[np.int64], size: int
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]:
    """The last ``size`` training examples become the validation set."""
    if not 0 <= size < len(images):
        raise ValueError(f"validation size must be in [0, {len(images)}), got {size}")
    cut = len(images) - size
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def batches(n: int, batch_size: int, order: Iterable[int] | None = None) -> list[NDArray[np.int64]]:
    """Index batches covering ``range(n)`` in ``order``; the last batch may be smaller."""
    idx = np.arange(n) if order is None else np.asarray(order, dtype=np.int64)
    return [idx[k : k + batch_size] for k in range(0, n, batch_size)]
