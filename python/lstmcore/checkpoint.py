"""Checkpoints: one .npz of parameters, optimizer state and JSON metadata, written atomically.

Saving writes a temporary file in the target's directory, fsyncs it, renames it over the target
and fsyncs the directory: a reader sees the previous complete file or the new complete one.
Loading uses ``allow_pickle=False`` and validates every key and shape against the model before
anything is changed.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]

__all__ = ["CheckpointError", "load", "save", "validate_params"]

_PARAM = "param/"
_OPTIM = "optim/"
_META = "meta"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, tampered with or belongs to another model."""


def save(
    path: str | os.PathLike[str],
    params: dict[str, Array],
    optim_state: dict[str, Array],
    meta: dict[str, Any],
    extra: dict[str, Array] | None = None,
) -> None:
    path = Path(path)
    arrays: dict[str, Array] = {f"{_PARAM}{k}": v for k, v in params.items()}
    arrays.update({f"{_OPTIM}{k}": v for k, v in optim_state.items()})
    arrays.update(extra or {})
    arrays[_META] = np.array(json.dumps({"format": _FORMAT, **meta}))
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    """Replaces a small text file so a reader never sees it half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Deletes temporary files that an interrupted save (e.g. SIGKILL) left in ``directory``;
    complete checkpoints are never touched. Returns what was removed."""
    removed = []
    for stale in [*Path(directory).glob(".*.npz.*.tmp"), *Path(directory).glob(".*.json*.tmp")]:
        stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed


def load(
    path: str | os.PathLike[str],
) -> tuple[dict[str, Array], dict[str, Array], dict[str, Any], dict[str, Array]]:
    """Returns (params, optimizer state, metadata, other arrays); CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # our own handle: np.load leaks its file when the archive is unreadable
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as err:
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
