"""The optional CUDA path: ``lstmcore._cuda``, imported lazily so lstmcore never needs CUDA.

``_cuda`` links cuBLAS dynamically. Its run paths point at the ``nvidia-cublas`` wheel beside
lstmcore (``site-packages/nvidia/cu13/lib``) and, for a toolkit build, at the toolkit's
library folder; neither holds everywhere (another site-packages, a ``--target`` install, a
toolkit elsewhere), so cuBLAS is loaded first, globally, from the first of these that has it:
``$LSTMCORE_CUBLAS_DIR``; every ``nvidia/cu*/lib`` (and ``nvidia/cublas/lib``) on
``sys.path``; ``$CUDA_HOME``, ``$CUDA_PATH`` and ``/usr/local/cuda`` (``lib64``, ``lib``,
``targets/x86_64-linux/lib``); then the system loader's own search (``LD_LIBRARY_PATH``,
``ldconfig``). Where none has it, the reason names every place looked in.

What the GPU path runs is one table, :data:`GPU_SUPPORT`: every check of the library, the
MNIST trainer and ``lstmcore.train`` takes its refusal from it (:func:`refuse`,
:meth:`GpuFeature.refusal`), and docs/gpu.md's table is :func:`support_table`'s output (a test
compares them).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = [
    "GPU_SUPPORT",
    "GpuFeature",
    "GpuUnsupportedError",
    "available",
    "cublas_location",
    "gpu_feature",
    "load_module",
    "refuse",
    "require",
    "support_table",
]


# ---- what the GPU path supports ---------------------------------------------------------------


@dataclass(frozen=True)
class GpuFeature:
    """One feature and whether the GPU path runs it. ``api`` and ``flags``: how the library
    and ``lstmcore.train`` ask for it (none where they cannot); ``note``: the user-facing
    reason, for a refused feature the sentence every refusal of it carries."""

    key: str
    feature: str
    api: tuple[str, ...]
    flags: tuple[str, ...]
    supported: bool
    note: str

    def refusal(self, given: str | None = None, *, command_line: bool = False) -> str:
        """The one message refusing this feature on the GPU. ``given``: how the caller's
        input named it (``--layers 3``), else the table's first spelling."""
        if command_line:
            where, instead, spellings = "--device cuda", "--device cpu", self.flags
        else:
            where, instead, spellings = "device='cuda'", "device='cpu'", self.api
        named = given or (spellings[0] if spellings else self.feature)
        return f"{named}: not supported on {where}: {self.note} (use {instead})"


class GpuUnsupportedError(ValueError):
    """A feature the GPU path does not run was asked for on it (there is no silent fallback
    to the CPU); ``feature`` is its row of :data:`GPU_SUPPORT`."""

    def __init__(self, feature: GpuFeature, message: str) -> None:
        super().__init__(message)
        self.feature = feature


def _yes(
    key: str, feature: str, api: tuple[str, ...], flags: tuple[str, ...], note: str
) -> GpuFeature:
    return GpuFeature(key, feature, api, flags, True, note)


def _no(
    key: str, feature: str, api: tuple[str, ...], flags: tuple[str, ...], note: str
) -> GpuFeature:
    return GpuFeature(key, feature, api, flags, False, note)


# the docs' order: what runs, then what is refused
GPU_SUPPORT: tuple[GpuFeature, ...] = (
    _yes(
        "lstm",
        "one unidirectional LSTM layer, float32 or float64, forward and backward",
        ('ops.lstm_forward(..., device="cuda")', 'nn.LSTM(..., device="cuda")'),
        (),
        "cuBLAS GEMMs and fused cell kernels; the same inputs give the same bits",
    ),
    _yes(
        "buffers",
        "reused device buffers and skipped outputs",
        ("reuse=", "need_y=False", "need_dx=False", "for_backward=False"),
        (),
        "one set of device buffers per layer, kept from call to call, as on the CPU",
    ),
    _yes(
        "training",
        "training the MNIST classifier, everything resident on the device",
        (),
        ("--device cuda",),
        "float32; per step only the batch's indices go up and three numbers come back",
    ),
    _yes(
        "optimizers",
        "Adam, AdamW, SGD with momentum; weight decay; gradient clipping",
        ("optim.Adam", "optim.SGD"),
        ("--optimizer {adam,adamw,sgd}", "--weight-decay", "--clip"),
        "the CPU's update arithmetic, so the same gradients give the CPU's bits",
    ),
    _yes(
        "tf32",
        "TF32 tensor cores for float32 GEMMs",
        (),
        ("--tf32",),
        "off by default (about 1e-3 relative error); GPU only",
    ),
    _no(
        "layers",
        "more than one layer",
        ("num_layers > 1",),
        ("--layers N",),
        "the GPU path runs one LSTM layer",
    ),
    _no(
        "reverse",
        "the reverse direction",
        ("reverse=True", "bidirectional=True"),
        ("--bidirectional",),
        "the GPU path runs the forward direction only",
    ),
    _no(
        "lengths",
        "variable sequence lengths",
        ("lengths",),
        (),
        "the GPU path runs every sequence over all T steps",
    ),
    _no(
        "bf16",
        "bf16 GEMM operands",
        ("precision='bf16'",),
        ("--precision bf16",),
        "bf16 runs on the CPU only",
    ),
    _no(
        "stream",
        "feeding a sequence one step at a time",
        ("LSTM.stream()",),
        (),
        "streaming runs on the CPU only",
    ),
    _no(
        "shift",
        "augmentation by random shifts",
        (),
        ("--shift N",),
        "the GPU trainer keeps the training set on the device, with no per-batch augmentation",
    ),
    _no(
        "float64_training",
        "training in float64",
        ("SequenceClassifier(dtype=np.float64)",),
        (),
        "the GPU trainer runs in float32",
    ),
    _no(
        "sgd_variants",
        "SGD with Nesterov momentum or dampening",
        ("optim.SGD(nesterov=True)", "optim.SGD(dampening=...)"),
        (),
        "the GPU trainer's SGD has plain momentum only",
    ),
    _no(
        "other_optimizers",
        "any other optimizer",
        ("optim.Optimizer subclasses",),
        (),
        "the GPU trainer runs Adam, AdamW and SGD",
    ),
)

_FEATURES = {f.key: f for f in GPU_SUPPORT}


def gpu_feature(key: str) -> GpuFeature:
    """The row of :data:`GPU_SUPPORT` named ``key``."""
    return _FEATURES[key]


def refuse(
    key: str, given: str | None = None, *, command_line: bool = False
) -> GpuUnsupportedError:
    """The error refusing feature ``key`` on the GPU, to raise; ``given`` and
    ``command_line`` as in :meth:`GpuFeature.refusal`."""
    feature = _FEATURES[key]
    if feature.supported:
        raise ValueError(f"{key}: the GPU supports it, there is nothing to refuse")
    return GpuUnsupportedError(feature, feature.refusal(given, command_line=command_line))


def support_table() -> str:
    """:data:`GPU_SUPPORT` as the Markdown table in docs/gpu.md."""
    lines = ["| feature | asked for with | on the GPU |", "| --- | --- | --- |"]
    for f in GPU_SUPPORT:
        asked = ", ".join(f"`{s}`" for s in (*f.api, *f.flags))
        lines.append(f"| {f.feature} | {asked} | {'yes' if f.supported else 'no'}: {f.note} |")
    return "\n".join(lines) + "\n"


# ---- loading the module -----------------------------------------------------------------------

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
