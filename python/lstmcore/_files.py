"""Atomic file replacement, the one mechanism behind checkpoints, metrics, config and downloads;
and reading only regular files.

The new content goes to a temporary file beside the target (``.NAME.XXXX.tmp``), is flushed and
fsynced, then renamed over the target, and the directory is fsynced: a reader, or a process
killed at any moment, sees the previous complete file or the new complete one. On any error the
temporary file is removed and the target is untouched, and errors name the target, never the
temporary (an implementation detail the user never asked for).

Inputs are read through :func:`open_regular`: a FIFO would block the open and every read
forever, a device can stream without end (``/dev/zero``), a directory is no input.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


class NotRegularFileError(OSError):
    """A path that must be a regular file is a FIFO, device, directory or socket; the message
    names the path and what it is."""


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def check_regular(path: str | os.PathLike[str], mode: int) -> None:
    """NotRegularFileError naming ``path`` unless ``mode`` (an st_mode) is a regular file's."""
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise NotRegularFileError(f"{os.fsdecode(path)}: {kind}, not a regular file")


def open_regular(path: str | os.PathLike[str]) -> io.BufferedReader:
    """``path`` opened for reading in binary; NotRegularFileError (an OSError) when it is not a
    regular file. Checked before opening (opening a device can itself act, e.g. rewind a
    tape), and again on the open descriptor: the path may have been replaced in between, and
    O_NONBLOCK keeps that open from blocking on a FIFO without a writer."""
    check_regular(path, os.stat(path).st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        check_regular(path, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _naming(err: OSError, target: Path) -> OSError:
    """The same error (same type and errno) naming the target instead of the temporary."""
    return type(err)(err.errno, err.strerror, str(target))


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
        try:
            os.replace(tmp, target)
        except OSError as err:
            raise _naming(err, target) from err
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
        except OSError as err:  # a read-only or full file system, a missing directory
            raise _naming(err, target) from err
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
