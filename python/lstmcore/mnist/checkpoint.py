"""Checkpoints: one .npz of parameters, optimizer state and JSON metadata, written atomically.

Saving goes through ``lstmcore._files.atomic_write``: a reader, or a process killed at any
moment, sees the previous complete file or the new complete one.

Loading reads within a budget: a forged file never makes it allocate what the file declares.

1. The metadata (member ``meta``: a JSON string of at most ``MAX_META_CHARS`` characters,
   nested at most ``MAX_DEPTH`` deep, no integer longer than ``MAX_INT_DIGITS`` digits) is read
   first, and the model description in it is validated alone: integer sizes >= 1, at most
   ``MAX_LAYERS`` layers and ``MAX_PARAMS`` parameters (see :func:`model_description`).
2. That description says what every member must hold, its exact shape and dtype:

   - ``param/<name>``: every parameter of the described model, float32, all required
     (lstmcore 0.1's ``lstm.w_ih``, ``lstm.w_hh``, ``lstm.bias`` in place of today's names
     for a model of one layer and one direction);
   - ``optim/<kind>:<name>`` (kind ``momentum``, ``exp_avg`` or ``exp_avg_sq``): the shape
     and dtype of parameter ``name``; ``optim/step``: an int64 scalar;
   - ``epoch_order`` and ``task.permutation``: int64 vectors of at most ``MAX_ORDER`` and
     ``MAX_PIXELS`` entries (their exact lengths are checked by their readers).

   Any other member is refused, not ignored: lstmcore writes no other, so an unknown member is
   a forgery or a newer format, and what it holds could not be bounded.
3. Before any member's data is read, each is checked in the zip directory (named once, stored
   or deflated, not encrypted: zipfile inflates bzip2 and LZMA members without an output bound)
   and by its .npy header (the shape and dtype above, a size the zip entry agrees with). Then
   each is read in bounded chunks up to exactly that size, so a deflated member is never
   inflated further than it must be, whatever its zip entry claims.

Every failure, of the zip, its compression, a header or the JSON, is a CheckpointError naming
the file. The parameters' values are checked (finite, the model's shapes) by
:func:`validate_params` before they are used.
"""

from __future__ import annotations

import json
import lzma
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files
from lstmcore import reference as ref
from lstmcore.nn import _V01_BIAS, _V01_NAMES

Array = NDArray[Any]

__all__ = ["CheckpointError", "load", "model_description", "save", "validate_params"]

_PARAM = "param/"
_OPTIM = "optim/"
_META = "meta"
_FORMAT = 1
_ZIP_MAGIC = b"PK\x03\x04"  # every .npz written by np.savez starts with a local file header

EPOCH_ORDER = "epoch_order"  # run.py's shuffled order of the training set
PERMUTATION = "task.permutation"  # model.py's pixel order of the permuted task
_STATE_KINDS = ("momentum", "exp_avg", "exp_avg_sq")  # optim.py's per-parameter state
_STATE_SCALARS = ("step",)  # Adam's step count

MAX_META_CHARS = 2**22  # about 16,000 epochs of history
MAX_DEPTH = 32  # lstmcore writes 4 levels
MAX_INT_DIGITS = 64  # the largest integer written is a 128-bit RNG state (39 digits)
MAX_LAYERS = 64
MAX_PARAMS = 2**26  # 256 MiB of float32
MAX_ORDER = 2**24  # training images
MAX_PIXELS = 2**20  # pixels of one image
_MAX_HEADER = 4096  # bytes of a .npy preamble: np.save writes 128
_CHUNK = 2**20  # bytes inflated per read
_ENCRYPTED = 0x1 | 0x40  # zip flag bits: traditional and strong encryption
_SIZE_KEYS = ("input_size", "hidden_size", "num_classes")
_LAYER_KEYS = ("num_layers", "bidirectional", "dropout")  # absent in lstmcore 0.1's files

# everything reading a forged zip, its compression or a .npy header can raise; MemoryError is
# not here on purpose: nothing is allocated that the layout has not bounded
_READ_ERRORS = (
    OSError,  # bz2 errors too
    EOFError,
    ValueError,  # numpy's header checks, JSON, UnicodeDecodeError
    struct.error,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    RuntimeError,  # an encrypted member; NotImplementedError: an unsupported method or flag
    OverflowError,
)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or belongs to another model."""


class _Header(NamedTuple):
    """A member's .npy preamble: its length in bytes and what it declares."""

    length: int
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype[Any]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class _Spec:
    """What one member must hold: ``shape`` of ``dtype`` or, when ``shape`` is None, a vector
    of ``dtype`` of at most ``max_len`` entries."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...] | None = None
    max_len: int = 0

    def admits(self, header: _Header) -> bool:
        if header.dtype != self.dtype:  # |S0, objects, the other byte order: all refused here
            return False
        if self.shape is None:
            return len(header.shape) == 1 and 0 <= header.shape[0] <= self.max_len
        return header.shape == self.shape

    def __str__(self) -> str:
        shape = self.shape if self.shape is not None else f"(n,) with n <= {self.max_len}"
        return f"{shape} {self.dtype}"


class _Bounded:
    """A member as numpy's header parser reads it, refused past ``limit`` bytes: a forged header
    length would otherwise be one read of up to 4 GiB."""

    def __init__(self, member: IO[bytes], limit: int) -> None:
        self.member, self.left = member, limit

    def read(self, size: int = -1) -> bytes:
        if not 0 <= size <= self.left:
            raise ValueError(f"a .npy header longer than {_MAX_HEADER} bytes")
        data = self.member.read(size)
        self.left -= len(data)
        return data


def save(
    path: str | os.PathLike[str],
    params: dict[str, Array],
    optim_state: dict[str, Array],
    meta: dict[str, Any],
    extra: dict[str, Array] | None = None,
) -> None:
    arrays: dict[str, Array] = {f"{_PARAM}{k}": v for k, v in params.items()}
    arrays.update({f"{_OPTIM}{k}": v for k, v in optim_state.items()})
    arrays.update(extra or {})
    arrays[_META] = np.array(json.dumps({"format": _FORMAT, **meta}))
    with _files.atomic_write(path) as (out, _):
        np.savez(out, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly


def load(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Array], dict[str, Array], dict[str, Any], dict[str, Array]]:
    """Returns (params, optimizer state, metadata, other arrays), read within the budget the
    module docstring states; CheckpointError if unreadable or not what its metadata describes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as handle:
            if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:  # .npy, pickle, text, empty
                raise CheckpointError(f"{path}: not an lstmcore checkpoint")
            handle.seek(0)
            with zipfile.ZipFile(handle) as archive:
                meta, arrays = _read_checked(path, archive)
    except CheckpointError:
        raise
    except _READ_ERRORS as err:
        raise CheckpointError(f"{path}: not a readable checkpoint: {_line(err)}") from err
    params = {k[len(_PARAM) :]: v for k, v in arrays.items() if k.startswith(_PARAM)}
    optim = {k[len(_OPTIM) :]: v for k, v in arrays.items() if k.startswith(_OPTIM)}
    other = {k: v for k, v in arrays.items() if not k.startswith((_PARAM, _OPTIM))}
    return params, optim, meta, other


def model_description(path: str | os.PathLike[str], meta: dict[str, Any]) -> dict[str, Any]:
    """SequenceClassifier's arguments from a checkpoint's metadata alone, validated: integer
    sizes >= 1, at most MAX_LAYERS layers and MAX_PARAMS parameters. lstmcore 0.1's files have
    no layer keys: one layer, one direction, no dropout."""
    described = meta.get("model")
    if not isinstance(described, dict) or not set(_SIZE_KEYS) <= set(described) <= {
        *_SIZE_KEYS,
        *_LAYER_KEYS,
    }:
        raise CheckpointError(f"{path}: no model description in its metadata")
    try:
        out: dict[str, Any] = {k: _count(k, described[k], MAX_PARAMS) for k in _SIZE_KEYS}
        out["num_layers"] = _count("num_layers", described.get("num_layers", 1), MAX_LAYERS)
        out["bidirectional"] = described.get("bidirectional", False)
        out["dropout"] = float(described.get("dropout", 0.0))
        if not isinstance(out["bidirectional"], bool):
            raise TypeError(f"bidirectional must be true or false, got {out['bidirectional']!r}")
        if not 0.0 <= out["dropout"] <= 1.0:  # NaN fails too
            raise ValueError(f"dropout must be in [0, 1], got {out['dropout']!r}")
        count = sum(math.prod(shape) for shape in _param_shapes(out).values())
        if count > MAX_PARAMS:
            raise ValueError(f"{count} parameters, more than the {MAX_PARAMS} a checkpoint holds")
    except (TypeError, ValueError, OverflowError) as err:
        raise CheckpointError(f"{path}: bad model description: {err}") from err
    return out


def _count(name: str, value: Any, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not 1 <= value <= most:
        raise ValueError(f"{name} must be in [1, {most}], got {value}")
    return value


def _param_shapes(described: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape under SequenceClassifier's names (torch's, ``lstm.`` and
    ``head.`` in front): what nn.LSTM and nn.Linear allocate, known before they do."""
    h, dirs = described["hidden_size"], 2 if described["bidirectional"] else 1
    shapes: dict[str, tuple[int, ...]] = {}
    for name in ref.param_names(described["num_layers"], described["bidirectional"]):
        kind, _, rest = name.partition("_l")
        inputs = described["input_size"] if rest.partition("_")[0] == "0" else dirs * h
        shape = {"weight_ih": (4 * h, inputs), "weight_hh": (4 * h, h)}.get(kind, (4 * h,))
        shapes[f"lstm.{name}"] = shape
    shapes["head.weight"] = (described["num_classes"], dirs * h)
    shapes["head.bias"] = (described["num_classes"],)
    return shapes


def _layout(
    path: Path, meta: dict[str, Any], present: set[str]
) -> tuple[dict[str, _Spec], set[str]]:
    """(what every member the metadata allows must hold, the members it requires)."""
    described = model_description(path, meta)
    shapes = _param_shapes(described)
    if f"{_PARAM}lstm.bias" in present and described["num_layers"] == 1:
        # lstmcore 0.1: one bias under other names (nn.upgrade_v01_params reads them)
        old = {new: old for old, new in _V01_NAMES.items()}
        bias = shapes[_V01_BIAS[0]]
        shapes = {old.get(k, k): v for k, v in shapes.items() if k not in _V01_BIAS}
        shapes["lstm.bias"] = bias
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    params = {name: _Spec(f32, shape) for name, shape in shapes.items()}
    layout = {_PARAM + name: spec for name, spec in params.items()}
    for kind in _STATE_KINDS:
        layout |= {f"{_OPTIM}{kind}:{name}": spec for name, spec in params.items()}
    layout |= {_OPTIM + key: _Spec(i64, ()) for key in _STATE_SCALARS}
    layout[EPOCH_ORDER] = _Spec(i64, max_len=MAX_ORDER)
    layout[PERMUTATION] = _Spec(i64, max_len=MAX_PIXELS)
    return layout, {_PARAM + name for name in params}


def _read_checked(path: Path, archive: zipfile.ZipFile) -> tuple[dict[str, Any], dict[str, Array]]:
    """(metadata, arrays by member name): every member checked before any is read."""
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        key = info.filename.removesuffix(".npy")
        if key in entries:
            raise CheckpointError(f"{path}: {key} is in the file twice")
        entries[key] = info
    if _META not in entries:
        raise CheckpointError(f"{path}: not an lstmcore checkpoint (no metadata)")
    meta = _read_meta(path, archive, entries.pop(_META))
    layout, required = _layout(path, meta, set(entries))
    missing, unexpected = sorted(required - set(entries)), sorted(set(entries) - set(layout))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: its members do not match the model its metadata describes "
            f"(missing {missing}, unexpected {unexpected})"
        )
    headers = {
        key: _checked_header(path, archive, info, layout[key]) for key, info in entries.items()
    }
    arrays = {}
    for key, info in entries.items():
        header = headers[key]
        data = _payload(path, archive, info, header)
        order: Literal["C", "F"] = "F" if header.fortran else "C"
        arrays[key] = np.frombuffer(data, header.dtype).reshape(header.shape, order=order)
    return meta, arrays


def _read_meta(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, Any]:
    header = _header(path, archive, info)
    if (
        header.shape != ()
        or header.dtype.str[:2] != "<U"  # what np.array(str) is on every platform we build for
        or header.dtype.itemsize > 4 * MAX_META_CHARS
    ):
        raise CheckpointError(
            f"{path}: the metadata is {header.shape} {header.dtype}, not a JSON string of at "
            f"most {MAX_META_CHARS} characters"
        )
    _check_size(path, info, header)
    raw = _payload(path, archive, info, header)
    try:
        text = raw.decode("utf-32-le").rstrip("\0")  # numpy pads a str with NULs
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: the metadata is not text: {err}") from err
    return _parse_meta(path, text)


_JSON_TOKENS = re.compile(r'[][{}"\\]')


def _parse_meta(path: Path, text: str) -> dict[str, Any]:
    """The metadata's JSON within limits: json recurses once per level (100,000 levels are a
    RecursionError) and Python refuses integers of over 4,300 digits with a ValueError."""
    if _too_deep(text):
        raise CheckpointError(f"{path}: metadata nested deeper than {MAX_DEPTH} levels")
    try:
        meta = json.loads(text, parse_int=_bounded_int)
    except ValueError as err:  # JSONDecodeError is one
        raise CheckpointError(f"{path}: metadata is not valid JSON: {_line(err)}") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format")
    return meta


def _too_deep(text: str) -> bool:
    """Whether [ and { outside strings nest deeper than MAX_DEPTH: one pass over the brackets,
    quotes and backslashes, before json recurses."""
    depth, in_string, escaped = 0, False, -1
    for token in _JSON_TOKENS.finditer(text):
        at, char = token.start(), token.group()
        if in_string:
            if char == "\\" and at != escaped:
                escaped = at + 1  # the next character is escaped, whatever it is
            elif char == '"' and at != escaped:
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS})")
    return int(digits)


@contextmanager
def _open(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[IO[bytes]]:
    """The member, refused first when zipfile could not read it within a bound; any error
    reading it a CheckpointError naming it."""
    if info.flag_bits & _ENCRYPTED:
        raise CheckpointError(f"{path}: {info.filename} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(
            f"{path}: {info.filename} uses zip compression method {info.compress_type}; "
            "only stored and deflated members are read"
        )
    try:
        with archive.open(info) as member:
            yield member
    except CheckpointError:
        raise
    except _READ_ERRORS as err:
        raise CheckpointError(f"{path}: {info.filename} is unreadable: {_line(err)}") from err


def _header(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> _Header:
    with _open(path, archive, info) as member:
        bounded = _Bounded(member, _MAX_HEADER)
        version = np.lib.format.read_magic(bounded)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(bounded)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(bounded)
        else:
            raise CheckpointError(f"{path}: {info.filename} is .npy format {version}")
    return _Header(_MAX_HEADER - bounded.left, shape, fortran, dtype)


def _checked_header(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, spec: _Spec
) -> _Header:
    header = _header(path, archive, info)
    if not spec.admits(header):
        raise CheckpointError(
            f"{path}: {info.filename.removesuffix('.npy')} declares {header.shape} "
            f"{header.dtype}, the checkpoint's metadata calls for {spec}"
        )
    _check_size(path, info, header)
    return header


def _check_size(path: Path, info: zipfile.ZipInfo, header: _Header) -> None:
    """The zip entry's size against the header's (the read checks what the data really is)."""
    if info.file_size != header.length + header.nbytes:
        raise CheckpointError(
            f"{path}: {info.filename.removesuffix('.npy')} declares {header.nbytes} bytes of "
            f"data, its zip entry {info.file_size - header.length} (forged or corrupt)"
        )


def _payload(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, header: _Header
) -> bytearray:
    """The member's data after its header: exactly ``header.nbytes``, read and inflated in
    chunks, so no more is allocated than the data really holds."""
    with _open(path, archive, info) as member:
        _read_up_to(member, header.length)
        data = _read_up_to(member, header.nbytes)
        if len(data) != header.nbytes or member.read(1):  # the last read checks the CRC too
            raise CheckpointError(
                f"{path}: {info.filename.removesuffix('.npy')} does not hold the "
                f"{header.nbytes} bytes of data its header declares"
            )
    return data


def _read_up_to(member: IO[bytes], size: int) -> bytearray:
    data = bytearray()
    while len(data) < size:
        chunk = member.read(min(size - len(data), _CHUNK))
        if not chunk:
            break
        data += chunk
    return data


def _line(err: BaseException) -> str:
    """The first line of an error's message (numpy's and zipfile's may have several)."""
    lines = str(err).splitlines()
    return lines[0] if lines else type(err).__name__


def assign_params(
    path: str | os.PathLike[str], loaded: dict[str, Array], target: dict[str, Array]
) -> None:
    """Copies ``loaded`` into the arrays of ``target`` after :func:`validate_params`: either
    every parameter is replaced or, on CheckpointError, none is."""
    validate_params(path, loaded, target)
    for name, value in loaded.items():
        target[name][...] = value


def validate_params(
    path: str | os.PathLike[str], loaded: dict[str, Array], expected: dict[str, Array]
) -> None:
    """Raises CheckpointError unless ``loaded`` has exactly the expected names, shapes, dtypes,
    and only finite values."""
    if set(loaded) != set(expected):
        missing = sorted(set(expected) - set(loaded))
        unexpected = sorted(set(loaded) - set(expected))
        raise CheckpointError(
            f"{path}: parameters do not match the model "
            f"(missing {missing}, unexpected {unexpected})"
        )
    for name, want in expected.items():
        got = loaded[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise CheckpointError(
                f"{path}: {name} is {got.shape} {got.dtype}, the model needs "
                f"{want.shape} {want.dtype}"
            )
        if not np.all(np.isfinite(got)):
            raise CheckpointError(f"{path}: {name} holds non-finite values")
