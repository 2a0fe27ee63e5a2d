"""Checkpoints: one .npz of parameters, optimizer state and JSON metadata, written atomically.

Saving goes through ``lstmcore._files.atomic_write``: a reader, or a process killed at any
moment, sees the previous complete file or the new complete one.
Loading uses ``allow_pickle=False`` and validates every key and shape against the model before
anything is changed.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from lstmcore import _files

Array = NDArray[Any]

__all__ = ["CheckpointError", "load", "save", "validate_params"]

_PARAM = "param/"
_OPTIM = "optim/"
_META = "meta"
_FORMAT = 1
_ZIP_MAGIC = b"PK\x03\x04"  # every .npz written by np.savez starts with a local file header


def _check_member_sizes(path: Path, handle: Any) -> None:
    """CheckpointError unless every member's .npy header declares at most the bytes the
    member holds: NumPy allocates the declared size before reading, so a forged header
    could ask for any amount of memory."""
    with zipfile.ZipFile(handle) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                declared = math.prod(shape) * dtype.itemsize
                if declared > info.file_size:
                    name = info.filename.removesuffix(".npy").removeprefix(_PARAM)
                    raise CheckpointError(
                        f"{path}: {name} declares {declared} bytes of data in "
                        f"{info.file_size} (forged or corrupt)"
                    )


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or belongs to another model."""


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
    """Returns (params, optimizer state, metadata, other arrays); CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # our own handle: np.load leaks its file when the archive is unreadable
        with open(path, "rb") as handle:
            if handle.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:  # .npy, pickle, text, empty
                raise CheckpointError(f"{path}: not an lstmcore checkpoint")
            handle.seek(0)
            _check_member_sizes(path, handle)
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a readable checkpoint: {err}") from err
    if _META not in arrays:
        raise CheckpointError(f"{path}: not an lstmcore checkpoint (no metadata)")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except (json.JSONDecodeError, TypeError) as err:
        raise CheckpointError(f"{path}: metadata is not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format")
    params = {k[len(_PARAM) :]: v for k, v in arrays.items() if k.startswith(_PARAM)}
    optim = {k[len(_OPTIM) :]: v for k, v in arrays.items() if k.startswith(_OPTIM)}
    other = {k: v for k, v in arrays.items() if not k.startswith((_PARAM, _OPTIM))}
    return params, optim, meta, other


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
