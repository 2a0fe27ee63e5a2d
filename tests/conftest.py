"""The suite's shared fixtures and its three markers (registered in pyproject.toml):

- ``gpu``: needs a usable CUDA device. Skipped with the reason where there is none; with
  LSTMCORE_REQUIRE_GPU=1 (the GPU machine's run) that skip is a failure instead.
- ``subprocess``: starts another process (the command lines, the kill tests).
- ``slow``: takes more than about five seconds on two cores; ``-m "not slow"`` is the quick loop.

The tests are grouped by the layer they exercise: unit/ (the library and its C++ core),
mnist/ (the MNIST application), cli/ (the command lines), system/ (the whole: faults, the
browser, the GPU check's scripts, the package's layering).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import skip_or_fail


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's own name: fresh data per test, reproducible runs."""
    seed = sum(request.node.nodeid.encode()) * 7919 % (2**32)
    return np.random.default_rng(seed)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        import lstmcore

        available, reason = lstmcore.cuda_available()
        if not available:
            skip_or_fail(f"CUDA not usable here: {reason}")
