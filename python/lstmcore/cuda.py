"""The optional CUDA path: ``lstmcore._cuda``, imported lazily so lstmcore never needs CUDA.

``_cuda`` links cuBLAS dynamically. Its run paths point at the ``nvidia-cublas`` wheel beside
lstmcore (``site-packages/nvidia/cu13/lib``) and, for a toolkit build, at the toolkit's
library folder; neither holds everywhere (another site-packages, a ``--target`` install, a
toolkit elsewhere), so cuBLAS is loaded first, globally, from the first of these that has it:
``$LSTMCORE_CUBLAS_DIR``; every ``nvidia/cu*/lib`` (and ``nvidia/cublas/lib``) on
``sys.path``; ``$CUDA_HOME``, ``$CUDA_PATH`` and ``/usr/local/cuda`` (``lib64``, ``lib``,
``targets/x86_64-linux/lib``); then the system loader's own search (``LD_LIBRARY_PATH``,
``ldconfig``). Where none has it, the reason names every place looked in.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["available", "cublas_location", "load_module", "require"]

_module: ModuleType | None = None
_reason: str | None = None
_cublas: str | None = None  # where cuBLAS was loaded from

_NOT_BUILT = (
    "lstmcore was built without CUDA (reinstall with LSTMCORE_CUDA=ON on a machine with nvcc "
    "and cuBLAS)"
)
_HINT = (
    "pip install 'lstmcore[cuda]' (the nvidia-cublas wheel), or set LSTMCORE_CUBLAS_DIR to the "
    "folder that holds it"
)
# the cuBLAS libraries an extension needs, as its dynamic section names them
_NEEDED = re.compile(rb"libcublas\.so\.[0-9]+")


def module_path() -> Path | None:
    """Where ``lstmcore._cuda`` is, without importing it; None where it was not built."""
    spec = importlib.util.find_spec("lstmcore._cuda")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin)


def needed_sonames(binary: Path) -> list[str]:
    """The cuBLAS sonames ``binary`` links (``libcublas.so.13``), read from its bytes (its
    dynamic section names them); CUDA 13's when the file cannot be read."""
    try:
        found = {m.decode() for m in _NEEDED.findall(binary.read_bytes())}
    except OSError:
        found = set()
    main = sorted(n for n in found if n.startswith("libcublas.so."))
    return main or ["libcublas.so.13"]


def _with_lt(sonames: list[str]) -> list[str]:
    """libcublasLt of the same version before each libcublas (libcublas needs it)."""
    out: list[str] = []
    for name in sonames:
        out += [name.replace("libcublas.", "libcublasLt.", 1), name]
    return out


def search_dirs() -> list[Path]:
    """The folders searched for cuBLAS, in order (see the module's docstring)."""
    dirs: list[Path] = []
    env = os.environ.get("LSTMCORE_CUBLAS_DIR")
    if env:
        dirs.append(Path(env))
    for entry in sys.path:
        nvidia = Path(entry or ".") / "nvidia"
        if nvidia.is_dir():
            dirs.extend(sorted(nvidia.glob("cu*/lib"), reverse=True))  # newest first
            dirs.append(nvidia / "cublas" / "lib")
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    for root in dict.fromkeys(r for r in roots if r):
        for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
            dirs.append(Path(root) / sub)
    return list(dict.fromkeys(dirs))


def find_cublas(sonames: list[str], dirs: list[Path]) -> Path | None:
    """The first folder of ``dirs`` that holds the main cuBLAS library of ``sonames``."""
    for folder in dirs:
        if all((folder / n).is_file() for n in sonames):
            return folder
    return None


def missing_reason(sonames: list[str], dirs: list[Path], detail: str = "") -> str:
    """The reason given when cuBLAS is nowhere: what was looked for, and where."""
    looked = "; ".join(str(d) for d in dirs) or "(no folder)"
    extra = f" ({detail})" if detail else ""
    return (
        f"lstmcore._cuda is built but cannot load: {', '.join(sonames)} not found{extra}; looked "
        f"in: {looked}; and the system loader's path (LD_LIBRARY_PATH, ldconfig). {_HINT}"
    )


def _preload(sonames: list[str], dirs: list[Path]) -> tuple[str | None, str | None]:
    """Loads cuBLAS globally; (where from, None) or (None, the reason)."""
    folder = find_cublas(sonames, dirs)
    try:
        if folder is not None:
            for name in _with_lt(sonames):  # by full path: no search can pick another copy
                if (folder / name).is_file():
                    ctypes.CDLL(str(folder / name), mode=ctypes.RTLD_GLOBAL)
            return str(folder), None
        for name in sonames:  # the system loader's own search
            ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        return "the system loader's path", None
    except OSError as err:
        where = str(folder) if folder is not None else "the system loader's path"
        if folder is not None:
            return None, f"lstmcore._cuda is built but cuBLAS in {where} does not load: {err}"
        return None, missing_reason(sonames, dirs, str(err))


def load_module() -> ModuleType:
    """``lstmcore._cuda`` itself, with cuBLAS preloaded, whether or not a GPU is usable (its
    host-only functions need none); ImportError with the reason where it cannot load."""
    global _cublas
    path = module_path()
    if path is None:
        raise ImportError(_NOT_BUILT)
    if "lstmcore._cuda" not in sys.modules:
        where, problem = _preload(needed_sonames(path), search_dirs())
        if problem is not None:
            raise ImportError(problem)
        _cublas = where
    try:
        return importlib.import_module("lstmcore._cuda")
    except ImportError as err:
        raise ImportError(
            f"lstmcore._cuda is built but cannot load (cuBLAS from {_cublas}): {err}"
        ) from err


def _load() -> tuple[ModuleType | None, str | None]:
    global _module, _reason
    if _module is not None or _reason is not None:
        return _module, _reason
    try:
        module = load_module()
    except ImportError as err:
        _reason = str(err)
        return None, _reason
    count, why = module.device_count()
    if count < 1:
        _reason = f"no CUDA device is usable: {why}"
        return None, _reason
    _module = module
    return _module, None


def cublas_location() -> str | None:
    """Where cuBLAS was loaded from (a folder, or "the system loader's path"); None before
    the CUDA module was loaded or where it could not be."""
    return _cublas


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
