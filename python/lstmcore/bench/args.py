"""The benchmark's argparse helpers and limits (lstmcore.train keeps its own for now)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

MAX_THREADS = 1024  # a typo such as --threads 20000 must not start 20000 threads


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high], else argparse's one `error:` line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse
