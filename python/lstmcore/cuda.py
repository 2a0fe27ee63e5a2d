"""The optional CUDA path: ``lstmcore._cuda``, imported lazily so lstmcore never needs CUDA."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

__all__ = ["available", "require"]

_module: ModuleType | None = None
_reason: str | None = None


def _load() -> tuple[ModuleType | None, str | None]:
    global _module, _reason
    if _module is not None or _reason is not None:
        return _module, _reason
    try:
        _cuda = importlib.import_module("lstmcore._cuda")
    except ImportError as err:
        if any(Path(__file__).parent.glob("_cuda*.so")):
            _reason = (
                f"lstmcore._cuda is built but cannot load: {err} "
                "(pip install 'lstmcore[cuda]' brings cuBLAS)"
            )
        else:
            _reason = (
                "lstmcore was built without CUDA (reinstall with LSTMCORE_CUDA=ON on a "
                "machine with nvcc and cuBLAS)"
            )
        return None, _reason
    count, why = _cuda.device_count()
    if count < 1:
        _reason = f"no CUDA device is usable: {why}"
        return None, _reason
    _module = _cuda
    return _module, None


def available() -> tuple[bool, str]:
    """(True, device name) when a CUDA device can be used, else (False, the reason)."""
    module, reason = _load()
    if module is None:
        return False, reason or "unknown"
    return True, str(module.device_name(0))


def require() -> ModuleType:
    """The _cuda module; RuntimeError with the reason when CUDA cannot be used."""
    module, reason = _load()
    if module is None:
        raise RuntimeError(reason)
    return module
