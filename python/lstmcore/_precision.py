"""The library's precision names, checked here only (``lstmcore.ops``, ``lstmcore.nn`` and
``lstmcore.isa`` all call :func:`check_name`). ``lstmcore.reference`` keeps its own check on
purpose: it is the independent specification the fast paths are tested against.

No NumPy here: ``import lstmcore`` (which checks ``LSTMCORE_ISA`` through ``isa``) stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACCEPTED", "NAMES", "check_name"]

NAMES = ("fp32", "bf16")  # what a command line's --precision takes
ACCEPTED = (None, *NAMES)  # None: the arrays' own dtype (for float32 the same as "fp32")


def check_name(precision: Any) -> str | None:
    """``precision`` when it is one of :data:`ACCEPTED`, else ValueError naming it."""
    # the isinstance check first: an unhashable or array-like value never reaches `in`
    if (precision is not None and not isinstance(precision, str)) or precision not in ACCEPTED:
        raise ValueError(f"precision: expected one of {ACCEPTED}, got {precision!r}")
    return None if precision is None else str(precision)
