#!/usr/bin/env bash
# ARM64 in CI: cross-builds the extension for linux-aarch64 with Debian's cross toolchain and runs
# the core's correctness tests (tools/arm64_tests.txt) against the reference under qemu-user, on
# Debian's arm64 Python with the aarch64 wheels of numpy, scipy-openblas32 and pytest.
#
# Nothing aarch64 runs through binfmt_misc or a chroot (a CI container may have neither):
# qemu-aarch64 -L runs the arm64 interpreter directly, and a small wrapper script is its
# sys.executable, so the tests that start `sys.executable` in a subprocess run under qemu too.
#
# Stages, each timed; each one fails the step loudly (an arm64 run that did not happen is a
# failure, never a skip):
#   tools   g++-aarch64-linux-gnu, qemu-user, debootstrap from Debian (apt-get; sudo if not root)
#   root    Debian's arm64 minbase + python3 + libpython3-dev: debootstrap's first stage picks
#           and fetches the packages, dpkg-deb unpacks each (no maintainer script has to run)
#   wheels  the target's wheels fetched by the host's pip (--platform manylinux aarch64): the
#           package's run-time dependencies (pyproject.toml) and pytest; pybind11 for the host
#   build   CMakeLists.txt through tools/aarch64-toolchain.cmake (CUDA off); the module and the
#           Python package are installed beside the wheels, as pip would lay them out
#   smoke   under qemu: the module is AArch64, imports, and runs the generic kernels
#   test    pytest under qemu; then its JUnit report is checked: no failure, at least one pass
#           per test file, the generic ISA path passed, and every skip has an expected reason
#
# Everything lives in build/arm64/ (ignored: under build/) and is reused while its inputs are
# unchanged; CI starts from a fresh clone, where every stage runs from nothing.
# Environment: LSTMCORE_ARM64_CPU   qemu's CPU model (default neoverse-n1: AWS Graviton2,
#                                   Ampere Altra; "max" has SVE and SME, and is slower to emulate)
#              LSTMCORE_ARM64_SUITE Debian release of the arm64 root (default bookworm)
#              LSTMCORE_ARM64_MIRROR Debian mirror (default http://deb.debian.org/debian)
#              LSTMCORE_ARM64_JOBS  parallel build jobs (default 2)
#              LSTMCORE_ARM64_TESTS the selection file (default tools/arm64_tests.txt)
#              LSTMCORE_ARM64_TEST_TIMEOUT seconds the tests may take (default 900), then fail
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

cpu=${LSTMCORE_ARM64_CPU:-neoverse-n1}
suite=${LSTMCORE_ARM64_SUITE:-bookworm}
mirror=${LSTMCORE_ARM64_MIRROR:-http://deb.debian.org/debian}
jobs=${LSTMCORE_ARM64_JOBS:-2}
tests_file=${LSTMCORE_ARM64_TESTS:-tools/arm64_tests.txt}
test_timeout=${LSTMCORE_ARM64_TEST_TIMEOUT:-900}
work=$repo/build/arm64
root=$work/root     # the arm64 Debian root: dynamic loader, libc, python3.X, its headers
site=$work/site     # the target's site-packages: the wheels, then lstmcore
hostdir=$work/host  # host-side build tools (pybind11; cmake and ninja when the host lacks them)
cfg=$work/cfg       # what the host's CMake sees of the target's Python
build=$work/cmake
mkdir -p "$work"

# ---- timing and failure reporting ---------------------------------------------------------
stage=""
stage_t0=0
times=()
now() { date +%s.%N; }
begin() {
  stage=$1
  stage_t0=$(now)
  echo "== arm64 [$stage] $2"
}
end() {
  local dt
  dt=$(awk -v a="$stage_t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  times+=("$(printf '%-7s %7s s' "$stage" "$dt")")
  echo "== arm64 [$stage] done in $dt s"
  stage=""
}
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ "$stage" = test ]; then
    echo "== arm64 check FAILED (status $rc) in stage [test]: see pytest's report above" >&2
  elif [ "$rc" -ne 0 ]; then
    echo "== arm64 check FAILED (status $rc) in stage [${stage:-?}]: the arm64 tests did not run" >&2
  fi
}
trap on_exit EXIT
die() {
  echo "error: $*" >&2
  exit 1
}
pip_quiet() {  # pip, without this host's notes on index locations that do not exist here
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@" \
    2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
}
t_all=$(now)

# ---- tools: the cross compiler, qemu-user, debootstrap --------------------------------------
begin tools "host packages"
as_root=()  # apt-get and debootstrap need root: sudo where this is not root (as .ci/run does)
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then
  as_root=(sudo)
fi
missing=()
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt_install=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
    --no-install-recommends "${missing[@]}")
  "${apt_install[@]}" >/dev/null || { "${as_root[@]}" apt-get update -qq && "${apt_install[@]}" >/dev/null; }
fi
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (a Debian host is expected)"
python3 -m pip --version >/dev/null || die "python3 -m pip does not run on the host"
aarch64-linux-gnu-g++ --version | head -n 1
qemu-aarch64 --version | head -n 1
end

# ---- root: Debian's arm64 userland with python3 and its headers -------------------------------
begin root "Debian $suite arm64: minbase, python3, libpython3-dev"
key="$suite $mirror minbase python3,libpython3-dev"
if [ "$(cat "$root/.lstmcore-root" 2>/dev/null)" != "$key" ]; then
  "${as_root[@]}" rm -rf "$root"
  # first stage only: it resolves and downloads the packages and unpacks the base; the second
  # stage (maintainer scripts) would need to run arm64 code through binfmt_misc and a chroot
  "${as_root[@]}" debootstrap --arch=arm64 --variant=minbase --foreign \
    --include=python3,libpython3-dev "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log: $work/debootstrap.log)"; }
  [ ${#as_root[@]} -eq 0 ] || sudo chown -R "$(id -u):$(id -g)" "$root"
  n=0
  for deb in "$root"/var/cache/apt/archives/*.deb; do
    dpkg-deb -x "$deb" "$root"
    n=$((n + 1))
  done
  echo "$n packages unpacked"
  echo "$key" >"$root/.lstmcore-root"
fi
pybin=$(find "$root/usr/bin" -maxdepth 1 -regex '.*/python3\.[0-9]+' -printf '%f\n' | sort -V | tail -n 1)
[ -n "$pybin" ] || die "no python3.X in $root/usr/bin"
sysconfigdata=$root/usr/lib/$pybin/_sysconfigdata__linux_aarch64-linux-gnu.py
[ -f "$sysconfigdata" ] || die "$sysconfigdata not found"
pyconfig=$root/usr/include/aarch64-linux-gnu/$pybin/pyconfig.h
[ -f "$pyconfig" ] || die "$pyconfig not found (libpython3-dev:arm64 not unpacked?)"
# the target's version, ABI and extension suffix, read from its own sysconfig data
read -r pyver soabi ext_suffix < <(python3 - "$sysconfigdata" <<'EOF'
import runpy, sys
v = runpy.run_path(sys.argv[1])["build_time_vars"]
print(v["VERSION"], v["SOABI"], v["EXT_SUFFIX"])
EOF
)
echo "target Python $pyver ($soabi)"
end

# ---- wheels: the target's (aarch64) packages, and the host's build tools -----------------------
begin wheels "aarch64 wheels for CPython $pyver, host build tools"
mapfile -t reqs < <(python3 - <<'EOF'
import re, tomllib
with open("pyproject.toml", "rb") as f:
    meta = tomllib.load(f)
name = lambda r: re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower()
project = meta["project"]
print("\n".join(project["dependencies"]))  # what lstmcore needs at run time
print("\n".join(r for r in project["optional-dependencies"]["test"] if name(r) == "pytest"))
print("\n".join(r for r in meta["build-system"]["requires"] if name(r) == "pybind11"))
EOF
)
target_reqs=("${reqs[@]:0:${#reqs[@]}-1}")
pybind11_req=${reqs[-1]}
key="$pyver ${target_reqs[*]} | $pybind11_req"
pyv=${pyver//./}
if [ "$(cat "$work/.lstmcore-wheels" 2>/dev/null)" != "$key" ]; then
  rm -rf "$site" "$hostdir"
  pip_quiet --target "$site" \
    --only-binary=:all: --implementation cp --python-version "$pyver" --abi "cp$pyv" \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 "${target_reqs[@]}"
  pip_quiet --target "$hostdir" "$pybind11_req"
  echo "$key" >"$work/.lstmcore-wheels"
fi
cmake_bin=cmake
generator=Ninja
if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  if [ ! -x "$hostdir/bin/cmake" ] || [ ! -x "$hostdir/bin/ninja" ]; then
    pip_quiet --target "$hostdir" cmake ninja
  fi
  export PATH="$hostdir/bin:$PATH"
  export PYTHONPATH="$hostdir${PYTHONPATH:+:$PYTHONPATH}"  # for the cmake/ninja entry points
fi
find "$site" -maxdepth 1 -name '*.dist-info' -printf '%f\n' | sed 's/\.dist-info$//' | sort | tr '\n' ' '
echo
end

# ---- build: CMakeLists.txt through the toolchain file ---------------------------------------
begin build "cross-compiling lstmcore._core for aarch64 ($jobs jobs)"
# The host's CMake needs a Python interpreter (FindPython's Interpreter component, and the
# query of scipy_openblas32's directories in CMakeLists.txt): the host's python3, which cannot
# import the aarch64 scipy_openblas32 (its __init__ dlopens its library), so it imports a stub
# answering the two directory queries with the aarch64 wheel's. Headers: the target's, with
# its own pyconfig.h (Debian's dispatches on the architecture to a path outside this dir).
key="$(cat "$root/.lstmcore-root") | $(cat "$work/.lstmcore-wheels") | $(command -v python3)"
if [ "$(cat "$cfg/.lstmcore-cfg" 2>/dev/null)" != "$key" ]; then  # unchanged: no rebuild
  rm -rf "$cfg"
  mkdir -p "$cfg/py/scipy_openblas32" "$cfg/include"
  cat >"$cfg/py/scipy_openblas32/__init__.py" <<EOF
# stub for cross-compiling (tools/arm64_check.sh): the aarch64 wheel's directories
def get_include_dir():
    return "$site/scipy_openblas32/include"


def get_lib_dir():
    return "$site/scipy_openblas32/lib"
EOF
  cat >"$cfg/python" <<EOF
#!/bin/sh
PYTHONPATH="$cfg/py" exec "$(command -v python3)" "\$@"
EOF
  chmod +x "$cfg/python"
  cp -r "$root/usr/include/$pybin/." "$cfg/include/"
  cp "$pyconfig" "$cfg/include/pyconfig.h"
  echo "$key" >"$cfg/.lstmcore-cfg"
fi
export LSTMCORE_ARM64_ROOT=$root  # the toolchain file's CMAKE_CROSSCOMPILING_EMULATOR
if [ -f "$build/CMakeCache.txt" ] && ! grep -qx "CMAKE_HOME_DIRECTORY:INTERNAL=$repo" "$build/CMakeCache.txt"; then
  rm -rf "$build"  # configured for another checkout
fi
"$cmake_bin" -S . -B "$build" -G "$generator" --toolchain "$repo/tools/aarch64-toolchain.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DLSTMCORE_CUDA=OFF \
  -DPython_EXECUTABLE="$cfg/python" -DPython_INCLUDE_DIR="$cfg/include" \
  -Dpybind11_DIR="$(PYTHONPATH=$hostdir python3 -c 'import pybind11; print(pybind11.get_cmake_dir())')" \
  >"$work/configure.log" 2>&1 ||
  { tail -n 30 "$work/configure.log" >&2; die "CMake configure failed (log: $work/configure.log)"; }
grep -E '^-- (lstmcore|Found Python|Found pybind11)' "$work/configure.log" || true
"$cmake_bin" --build "$build" -j "$jobs" >"$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log" >&2; die "the cross build failed (log: $work/build.log)"; }
if grep -q 'warning:' "$work/build.log"; then
  echo "compiler warnings on aarch64 (full log: $work/build.log):"
  grep 'warning:' "$work/build.log" | sed "s|$repo/||" | sort | uniq -c
fi
built=$(find "$build" -maxdepth 1 -name '_core*.so' | head -n 1)
[ -n "$built" ] || die "no _core module in $build"
aarch64-linux-gnu-readelf -h "$built" | grep -q 'Machine:.*AArch64' || die "$built is not AArch64"
for isa_tu in avx2 avx512; do  # CMakeLists.txt must leave the x86 kernels out of this build
  if find "$build" -name "$isa_tu.cpp.o" | grep -q .; then die "the $isa_tu kernels were compiled for aarch64"; fi
done
# the layout pip gives an installed wheel: lstmcore/ beside scipy_openblas32/ in site-packages
# (the module's run path is $ORIGIN/../scipy_openblas32/lib). FindPython leaves Python_SOABI
# empty when it cannot run the target's interpreter, so the module is named here, as the
# target's interpreter calls extension modules.
rm -rf "$site/lstmcore"
mkdir -p "$site/lstmcore"
tar -C python/lstmcore --exclude='__pycache__' --exclude='*.so' -cf - . | tar -C "$site/lstmcore" -xf -
cp "$built" "$site/lstmcore/_core$ext_suffix"
echo "installed $site/lstmcore/_core$ext_suffix"
end

# ---- the interpreter under qemu ------------------------------------------------------------
mkdir -p "$work/bin" "$work/tmp"
py=$work/bin/python
# -0 makes this script the interpreter's argv[0], hence its sys.executable; TMPDIR lies outside
# the root so that qemu's -L never splits a directory between the root and the host
cat >"$py" <<EOF
#!/bin/sh
export PYTHONPATH="$site" TMPDIR="$work/tmp" PYTHONNOUSERSITE=1
exec qemu-aarch64 -cpu "$cpu" -L "$root" -0 "\$0" "$root/usr/bin/$pybin" "\$@"
EOF
chmod +x "$py"

begin smoke "import under qemu-aarch64 -cpu $cpu"
"$py" - "$site" <<'EOF'
import platform, sys
import numpy as np
import lstmcore, scipy_openblas32
from lstmcore import ops, reference

assert platform.machine() == "aarch64", platform.machine()
assert lstmcore.__file__.startswith(sys.argv[1]), lstmcore.__file__
assert lstmcore.isa() == "generic", lstmcore.isa()
rng = np.random.default_rng(0)
x = rng.standard_normal((3, 2, 4))
w_ih, w_hh, b = rng.standard_normal((20, 4)), rng.standard_normal((20, 5)), rng.standard_normal(20)
y = ops.lstm_forward(x, None, None, w_ih, w_hh, b)[0]
r = reference.lstm_forward(x, None, None, w_ih, w_hh, b)[0]
err = np.linalg.norm(y - r) / np.linalg.norm(r)
assert err < 1e-10, err
print(f"{platform.machine()} Python {platform.python_version()}, numpy {np.__version__},",
      f"{scipy_openblas32.get_openblas_config().split(' MAX')[0]}; lstmcore.isa() = {lstmcore.isa()},",
      f"{lstmcore.get_num_threads()} threads; a float64 forward within {err:.1e} of the reference")
EOF
end

# ---- test: the selection under qemu, then its report checked ---------------------------------
mapfile -t selection < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$tests_file")
[ ${#selection[@]} -gt 0 ] || die "$tests_file selects nothing"
begin test "pytest under qemu: ${#selection[@]} arguments from $tests_file"
log=$work/pytest.log
junit=$work/junit.xml
rm -f "$log" "$junit"
set +e
timeout "$test_timeout" "$py" -m pytest -q -p no:cacheprovider --junitxml="$junit" \
  -o junit_family=xunit1 "${selection[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
[ "$rc" -ne 124 ] || die "pytest under qemu ran past LSTMCORE_ARM64_TEST_TIMEOUT=$test_timeout s"
[ "$rc" -eq 0 ] || die "pytest under qemu failed (status $rc)"
python3 - "$junit" "${selection[@]}" <<'EOF'
import collections, re, sys
import xml.etree.ElementTree as ET

# the only skips expected on aarch64: the x86 kernels, which this build does not have
EXPECTED_SKIP = re.compile(r"built for a CPU architecture other than x86-64")
cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
problems = []
passed = collections.Counter()
generic = 0
for case in cases:
    outcome = [c for c in case if c.tag in ("failure", "error", "skipped")]
    if not outcome:
        passed[case.get("file", "")] += 1
        generic += "test_isa" in case.get("classname", "") and "generic" in case.get("name", "")
    elif outcome[0].tag == "skipped":
        message = outcome[0].get("message", "")
        if not EXPECTED_SKIP.search(message):
            problems.append(f"unexpected skip: {case.get('classname')}::{case.get('name')}: {message}")
    else:
        problems.append(f"{outcome[0].tag}: {case.get('classname')}::{case.get('name')}")
for arg in sys.argv[2:]:
    if arg.startswith("tests/") and arg.endswith(".py") and passed[arg] == 0:
        problems.append(f"{arg}: no test passed")
if any(a.startswith("tests/unit/test_isa.py") for a in sys.argv[2:]) and generic == 0:
    problems.append("tests/unit/test_isa.py: the generic path ran no test")
if not cases or sum(passed.values()) == 0:
    problems.append("no test passed")
print(f"junit report: {len(cases)} cases, {sum(passed.values())} passed",
      f"({generic} of them test_isa's generic path)")
for p in problems:
    print("error:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
end

total=$(awk -v a="$t_all" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
echo "== arm64 check passed in $total s (qemu-aarch64 -cpu $cpu, Debian $suite, Python $pyver):"
printf '   %s\n' "${times[@]}"
# the last line is pytest's own summary of the arm64 run
tail -n 1 "$log"
