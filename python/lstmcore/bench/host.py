"""The machine a run measured: CPU, cores, lstmcore's kernels and BLAS, the libraries'
versions, the environment that changes the BLAS, and the sgemm rate every floor is against."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence
from typing import Any

import lstmcore
from lstmcore._argtypes import usable_cores
from lstmcore._native import core


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The vector extensions that decide which kernels run (x86 Linux; [] elsewhere)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in have]
    except OSError:
        pass
    return []


def isa_path() -> str:
    """The instruction set of lstmcore's CPU kernels (avx512, avx2 or generic)."""
    return lstmcore.isa()


def versions() -> dict[str, str]:
    """Installed versions (read from the package metadata: nothing is imported)."""
    out = {"python": platform.python_version(), "lstmcore": lstmcore.__version__}
    for dist in ("numpy", "torch", "onnx", "onnxruntime", "keras", "jax"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def sgemm_rates(threads_list: Sequence[int], n: int) -> dict[int, float]:
    """The BLAS's (n, n) sgemm rate per thread count: the best of three medians of five, since
    a floor should not fall because another process took the core for a moment."""
    rates = {}
    for threads in threads_list:
        lstmcore.set_num_threads(threads)
        rates[threads] = 2.0 * n**3 / min(core.time_sgemm(n, 5) for _ in range(3))
    return rates


def header(mode: str, rounds: int, ceilings: dict[int, float]) -> dict[str, Any]:
    return {
        "mode": mode,
        "rounds": rounds,
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "isa": isa_path(),
        "isa_bf16": lstmcore.isa("bf16"),
        "blas_core": core.blas_core_name(),
        "versions": versions(),
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "ceilings_flops": ceilings,
    }


def print_header(h: dict[str, Any]) -> None:
    how = (
        f"isolated, {h['rounds']} round(s): each library alone in its own process"
        if h["mode"] == "isolated"
        else "interleaved in one process"
    )
    print(f"lstmcore benchmark ({how})")
    flags = " ".join(h["cpu_flags"]) or "none found"
    print(f"CPU: {h['cpu']} ({flags}); {h['cores']} cores, {h['usable_cores']} usable")
    print(
        f"lstmcore {h['versions']['lstmcore']}: ISA path {h['isa']} (bf16: {h['isa_bf16']}), "
        f"BLAS {h['blas_core']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in h["versions"].items()))
    env = ", ".join(f"{k}={'(not set)' if v is None else v}" for k, v in h["openblas_env"].items())
    print(f"environment: {env}")
    rates = ", ".join(f"{t} thread(s) {c / 1e9:.1f}" for t, c in h["ceilings_flops"].items())
    print(f"sgemm rate of lstmcore's BLAS (GFLOP/s): {rates}")
