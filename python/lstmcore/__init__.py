"""lstmcore: a small, fast LSTM engine with a C++ core and a NumPy API.

``lstmcore.ops`` holds ``lstm_forward`` / ``lstm_backward``; ``lstmcore.reference`` the plain
NumPy specification they are tested against.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from lstmcore import _precision
from lstmcore._argtypes import MAX_THREADS, usable_cores
from lstmcore._native import core as _core

if TYPE_CHECKING:  # the application's type, for the signature only
    from lstmcore.mnist.model import Classifier

__version__ = "0.1.0"
__all__ = ["__version__", "cuda_available", "get_num_threads", "isa", "load", "set_num_threads"]


def cuda_available() -> tuple[bool, str]:
    """(True, device name) when the CUDA path can run here, else (False, why not)."""
    from lstmcore import cuda

    return cuda.available()


def set_num_threads(n: int) -> None:
    """Sets how many threads the core uses (its BLAS and its own loops); ``n >= 1``, at most
    ``lstmcore._argtypes.MAX_THREADS`` (the ``--threads`` flags' limit too). The core's pool
    runs at most 255 threads at once: a larger ``n`` uses 255, and :func:`get_num_threads`
    says so. Its GEMMs run on at most as many threads as OpenBLAS's build holds callers for
    (``lstmcore._core.blas_call_limit()``, 64 in the pinned wheel; more at once would overflow
    its buffer table)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be >= 1 and <= {MAX_THREADS}, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the core uses."""
    return int(_core.get_num_threads())


def isa(precision: str | None = None) -> str:
    """The CPU kernels that run a precision: for float32/float64 (``precision`` None or
    ``"fp32"``) the instruction set, ``"avx512"``, ``"avx2"`` or ``"generic"``; for
    ``"bf16"``, ``"emulated on <that set>"``: this build has no AMX or AVX512-BF16 kernels, so
    bf16 runs the float32 kernels on bf16-rounded operands (the bf16 rule, exactly) on every CPU.

    Chosen once from the CPU (the widest it runs); the environment variable ``LSTMCORE_ISA``
    forces one, and naming one this CPU lacks is an error at import.
    """
    _precision.check_name(precision)
    path = str(_core.isa())
    return f"emulated on {path}" if precision == "bf16" else path


def _default_threads() -> int:
    """All cores this process may run on, unless LSTMCORE_NUM_THREADS says otherwise."""
    env = os.environ.get("LSTMCORE_NUM_THREADS", "").strip()
    if not env:
        return usable_cores()
    try:
        n = int(env)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(
            f"LSTMCORE_NUM_THREADS must be a positive integer, at most {MAX_THREADS}, got {env!r}"
        )
    return n


def _set_up() -> None:
    set_num_threads(_default_threads())
    isa()  # a bad LSTMCORE_ISA fails here, at import, with the reason


try:
    _set_up()
except ValueError as err:
    # every command is ``python -m lstmcore[.X]``, which imports this package while it locates
    # X, with sys.argv[0] == "-m" then (documented for -m; later it is the module's path):
    # there a bad environment is one line and status 2, as a bad flag is, before any command's
    # code could catch it. Everywhere else (``import lstmcore`` in a library) it raises.
    if sys.argv[:1] != ["-m"]:
        raise
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


def load(path: str | os.PathLike[str], precision: str | None = None) -> Classifier:
    """The trained MNIST classifier in a checkpoint: :func:`lstmcore.mnist.model.load` (the
    application, imported on first call: ``import lstmcore`` loads the library only)."""
    from lstmcore.mnist.model import load as load_classifier

    return load_classifier(path, precision=precision)
