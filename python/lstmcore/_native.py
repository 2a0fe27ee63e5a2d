"""Loads the compiled CPU core, making sure it finds its BLAS.

The extension carries a relative run path to ``scipy_openblas32/lib`` beside the package; loading
that library first (globally) also covers installs where the relative path does not hold.
"""

from __future__ import annotations

import ctypes
import importlib
import os
from types import ModuleType


def _preload_openblas() -> None:
    import scipy_openblas32

    lib_dir = scipy_openblas32.get_lib_dir()
    for name in sorted(os.listdir(lib_dir)):
        if name.startswith("libscipy_openblas") and ".so" in name:
            ctypes.CDLL(os.path.join(lib_dir, name), mode=ctypes.RTLD_GLOBAL)
            return


def load_core() -> ModuleType:
    _preload_openblas()
    return importlib.import_module("lstmcore._core")


core = load_core()
