"""The suite's shared fixtures and its three markers (registered in pyproject.toml):

- ``gpu``: needs a usable CUDA device. Skipped with the reason where there is none; with
  LSTMCORE_REQUIRE_GPU=1 (the GPU machine's run) that skip is a failure instead.
- ``subprocess``: starts another process (the command lines, the kill tests). A test that
  starts one without the marker fails, so ``-m "not subprocess"`` really runs in one process.
- ``slow``: takes more than about five seconds on two cores; ``-m "not slow"`` is the quick loop.

The tests are grouped by the layer they exercise: unit/ (the library and its C++ core),
mnist/ (the MNIST application), cli/ (the command lines), system/ (the whole: faults, the
browser, the GPU check's scripts, the package's layering).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

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


@pytest.fixture(autouse=True)
def _processes_need_the_marker(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fails a test that starts a process without ``@pytest.mark.subprocess`` (monkeypatch
    puts Popen back after the test)."""
    if request.node.get_closest_marker("subprocess") is not None:
        return
    name = request.node.nodeid

    def refusing_init(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
        del self, args, kwargs
        pytest.fail(f"{name} starts a process: mark it @pytest.mark.subprocess", pytrace=False)

    monkeypatch.setattr(subprocess.Popen, "__init__", refusing_init)
