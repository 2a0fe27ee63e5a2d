"""The command lines' argparse types and the limits they share, once for every command
(``lstmcore.train``, ``evaluate``, ``predict``, ``export``, ``serve`` and ``lstmcore.bench``)
and for the library itself: the thread limit is the core's, which ``set_num_threads`` and
``LSTMCORE_NUM_THREADS`` enforce too.

Every type refuses a value with argparse's one ``error:`` line, in one form:
``argument --flag: expected <what it takes>, got '<the text given>'``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "MAX_THREADS",
    "choices_metavar",
    "duration",
    "expected_integer",
    "integer",
    "parsed",
    "threads",
    "usable_cores",
]

T = TypeVar("T")

# this stops a typo (--threads 20000) and never refuses a machine's cores; the core itself runs
# at most 255 threads (its pool's limit) and uses 255 when asked for more
MAX_THREADS = max(1024, os.cpu_count() or 1)
MAX_DURATION = 1e6  # in the duration's own unit: about 11 days of seconds, 2 years of minutes


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def expected_integer(low: int, high: int | None = None) -> str:
    """What an integer setting takes, in words: ``an integer in [1, 8]``, ``an integer >= 0``."""
    return f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"


def parsed(convert: Callable[[str], T], expected: str) -> Callable[[str], T]:
    """An argparse type: ``convert(text)``, whose ValueError becomes the usage error
    ``expected <expected>, got '<text>'``."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except ValueError:  # int("x") and float("x") too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None

    return parse


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""

    def convert(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            raise ValueError(text)
        return value

    return parsed(convert, expected_integer(low, high))


def threads() -> Callable[[str], int]:
    """An argparse type: a thread count for the core, in [1, MAX_THREADS]."""
    return integer(1, MAX_THREADS)


def duration(unit: str, maximum: float = MAX_DURATION) -> Callable[[str], float]:
    """An argparse type: a number of ``unit`` (``"minutes"``) in (0, maximum]."""

    def convert(text: str) -> float:
        value = float(text)
        if not 0 < value <= maximum:  # NaN fails too
            raise ValueError(text)
        return value

    shown = f"{maximum:g}".replace("e+0", "e").replace("e+", "e")  # 1e6, not 1e+06
    return parsed(convert, f"{unit} in (0, {shown}]")


def choices_metavar(options: tuple[str, ...]) -> str:
    """A metavar listing the choices, as argparse's own ``choices=`` would write it (for a
    flag whose type checks the choice itself)."""
    return "{" + ",".join(options) + "}"
