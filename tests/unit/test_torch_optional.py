"""torch is optional: ``import lstmcore`` (and the NumPy library under it) never imports torch,
and ``lstmcore.torch`` without torch is one clear ImportError. Runs with or without torch
installed (each check in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter that imports the lstmcore this one imports (installed,
    or the source tree on PYTHONPATH: the environment is passed on unchanged)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.subprocess
def test_import_lstmcore_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import lstmcore, lstmcore.ops, lstmcore.nn, lstmcore.optim, lstmcore.reference\n"
        "import lstmcore.mnist.model\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.subprocess
def test_lstmcore_torch_without_torch_says_how_to_install() -> None:
    # sys.modules['torch'] = None makes `import torch` fail as if it were not installed
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "try:\n"
        "    import lstmcore.torch\n"
        "except ModuleNotFoundError as err:\n"
        "    print(err.name, '|', err)\n"
        "else:\n"
        "    raise SystemExit('imported without torch')\n"
    )
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    name, _, message = done.stdout.strip().partition(" | ")
    assert name == "torch"
    assert "pip install 'lstmcore[torch]'" in message
