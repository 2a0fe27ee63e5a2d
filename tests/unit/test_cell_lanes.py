"""cell.h's cell on the CPU kernels' vectors against the same cell on scalars, lane by lane.

The cell (cpp/include/lstmcore/cell.h) is one template; the CPU kernels instantiate it on their
vectors (kernels/cell_vec.h gives the vector primitives), the CUDA kernels on scalars.
cell_lanes.cpp runs both on the same random inputs (wide ranges: the middle, the bends,
saturation) and prints the largest relative differences; this test compiles it per ISA with
that kernel file's instruction-set flags and holds the differences to:

- float64, forward and backward, and float32 backward: 0. The same operations in the same order
  (libm per lane on float64 vectors), compiled without FMA contraction so that nothing but the
  cell's own code decides the roundings.
- float32 forward: 1e-6 against libm in float32 and against float64: the vector exp polynomial,
  rational tanh and reciprocal estimate are within a few float ulps of libm.
- +-inf and NaN inputs: saturation within two ulps of the limits, NaN in its own lane only.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from lstmcore._native import core as _core

ROOT = Path(__file__).resolve().parents[2]
SOURCE = Path(__file__).with_name("cell_lanes.cpp")

# (name, vector bytes, the -m flags CMakeLists.txt gives that kernel file)
ISAS = [
    ("generic", 16, []),
    ("avx2", 32, ["-mavx2", "-mfma"]),
    ("avx512", 64, ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mfma"]),
]
EXACT = ["f32_backward_vs_f32", "f64_forward_vs_f64", "f64_backward_vs_f64"]
APPROX = {"f32_forward_vs_f32": 1e-6, "f32_forward_vs_f64": 1e-6}


def compiler() -> str | None:
    named = os.environ.get("CXX")
    if named:
        return named
    for candidate in ("c++", "g++", "clang++"):
        found = shutil.which(candidate)
        if found is not None:
            return found
    return None


def build(cxx: str, out: Path, vbytes: int, flags: list[str]) -> None:
    cmd = [cxx, "-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off"]
    cmd += [*flags, f"-DLSTMCORE_VBYTES={vbytes}"]
    cmd += ["-I", str(ROOT / "cpp" / "include"), "-I", str(ROOT / "cpp" / "src" / "kernels")]
    cmd += [str(SOURCE), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"


def run(binary: Path, seed: int) -> dict[str, float]:
    done = subprocess.run(
        [str(binary), str(seed)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    values: dict[str, float] = {}
    for line in done.stdout.splitlines():
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


@pytest.mark.subprocess
@pytest.mark.parametrize(("isa", "vbytes", "flags"), ISAS, ids=[i[0] for i in ISAS])
def test_vector_cell_matches_scalar_cell(
    rng: np.random.Generator, tmp_path: Path, isa: str, vbytes: int, flags: list[str]
) -> None:
    cxx = compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++, g++, clang++) to build cell_lanes.cpp")
    if flags and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"{isa}: an x86-64 path, this is {platform.machine()}")
    binary = tmp_path / f"cell_lanes_{isa}"
    build(cxx, binary, vbytes, flags)  # compiled even where it cannot run
    ok, why = _core.isa_supported(isa)
    if not ok:
        pytest.skip(f"{isa}: compiled; not run: {why}")
    got = run(binary, int(rng.integers(2**63)))
    assert set(got) == {*EXACT, *APPROX, "special_failures"}, got
    for name in EXACT:
        assert got[name] == 0.0, (name, got)
    for name, tol in APPROX.items():
        assert got[name] <= tol, (name, got)
    assert got["special_failures"] == 0, got
