"""Atomic file replacement, the one mechanism behind checkpoints, metrics, config and downloads.

The new content goes to a temporary file beside the target (``.NAME.XXXX.tmp``), is flushed and
fsynced, then renamed over the target, and the directory is fsynced: a reader, or a process
killed at any moment, sees the previous complete file or the new complete one. On any error the
temporary file is removed and the target is untouched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[tuple[IO[Any], Path]]:
    """Yields (open temporary file, its path); the target is replaced when the block ends
    without an exception. Code in the block may check the temporary file by its path (after
    flushing) and raise to abandon it."""
    target = Path(path)
    fd, tmp = _create_temporary(target)
    try:
        with os.fdopen(fd, mode) as out:
            yield out, tmp
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _create_temporary(target: Path) -> tuple[int, Path]:
    """A new, empty file beside ``target``, created with mode 0666 so that the umask decides
    its permissions as for any file the user writes (mkstemp would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{target}: no free temporary name beside it")


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_write(path, "w") as (out, _):
        out.write(text)


def remove_stale_temporaries(directory: str | os.PathLike[str], names: list[str]) -> list[Path]:
    """Deletes the temporary files an interrupted atomic_write (e.g. SIGKILL) left for these
    target names; complete files are never touched. Returns what was removed."""
    removed = []
    for name in names:
        for stale in Path(directory).glob(f".{name}.*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed
