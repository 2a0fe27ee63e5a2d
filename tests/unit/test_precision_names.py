"""The library's precision names are checked in one place (lstmcore._precision): lstmcore.isa,
lstmcore.ops and lstmcore.nn take the same names and refuse the same others with the same
message. lstmcore.reference keeps its own check (the independent specification)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import lstmcore
from helpers import make_problem
from lstmcore import _precision, nn, ops


def callers(rng: np.random.Generator) -> dict[str, Callable[[Any], object]]:
    """Every library entry point that takes a precision, as a function of it."""
    p = make_problem(rng, 2, 2, 3, 4, dtype=np.float32)
    return {
        "isa": lstmcore.isa,
        "ops.lstm_forward": lambda precision: ops.lstm_forward(*p.inputs(), precision=precision),
        "ops.check_precision": ops.check_precision,
        "nn.LSTM": lambda precision: nn.LSTM(3, 4, precision=precision),
        "nn.LSTM.precision": lambda precision: setattr(nn.LSTM(3, 4), "precision", precision),
    }


@pytest.mark.parametrize("bad", ["bf8", "BF16", "fp16", "", "float32", 16, True, ["bf16"]])
def test_every_entry_point_refuses_unknown_names_alike(bad: Any, rng: np.random.Generator) -> None:
    want = f"precision: expected one of (None, 'fp32', 'bf16'), got {bad!r}"
    for name, call in callers(rng).items():
        with pytest.raises(ValueError) as refused:
            call(bad)
        assert str(refused.value) == want, name


@pytest.mark.parametrize("good", _precision.ACCEPTED)
def test_every_entry_point_takes_the_same_names(good: str | None, rng: np.random.Generator) -> None:
    for call in callers(rng).values():
        call(good)
