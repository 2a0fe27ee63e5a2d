#!/usr/bin/env bash
# Native memory safety: builds the core with AddressSanitizer + UndefinedBehaviorSanitizer in a
# venv of its own and runs the core, boundary and fuzz tests under it (any report fails), then
# runs valgrind's memcheck over a small forward/backward (tools/memcheck_case.py).
set -euo pipefail
cd "$(dirname "$0")/.."

# the regular (uninstrumented) build, for valgrind: a Python with lstmcore installed
regular_python=${LSTMCORE_PYTHON:-python3}
regular_python=$(command -v "$regular_python")
venv=${LSTMCORE_SANITIZE_VENV:-.sanitize-venv}
unset LSTMCORE_CUDA  # nvcc takes no -fsanitize: the instrumented build is the CPU core
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
pip install --quiet '.[test]' -C cmake.define.LSTMCORE_SANITIZE=ON \
  -C cmake.define.LSTMCORE_CUDA=OFF -C build-dir=build/sanitize

# Python itself is not instrumented: the runtimes load first; CPython's own allocations are not
# leak-checked (they are freed by the OS at exit), everything else is.
asan=$(g++ -print-file-name=libasan.so)
ubsan=$(g++ -print-file-name=libubsan.so)
# test_isa.py runs every ISA path this CPU supports; test_pool.py the pool (fork, concurrent
# callers, thread-count changes); test_optim.py the optimizer's update; test_fuzz.py the
# shifted batch too; test_concurrency.py and test_ops_checks.py the context's in-use guard,
# staleness and moved-input checks, and the shape checks before conversion
echo "== ASan + UBSan: core, every ISA path, pool, optimizer, boundary and fuzz tests"
LD_PRELOAD="$asan $ubsan" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python -m pytest -q -p no:cacheprovider tests/unit/test_ops.py tests/unit/test_fuzz.py \
    tests/unit/test_reference.py tests/unit/test_isa.py tests/unit/test_pool.py tests/unit/test_optim.py \
    tests/unit/test_concurrency.py tests/unit/test_ops_checks.py
deactivate

echo "== valgrind memcheck: a small forward/backward through the regular build"
if ! command -v valgrind >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind)
fi
if command -v valgrind >/dev/null; then
  PYTHONMALLOC=malloc valgrind --quiet --error-exitcode=99 --leak-check=no \
    --suppressions=tools/valgrind-python.supp \
    "$regular_python" tools/memcheck_case.py
else
  echo "valgrind not installed: memcheck skipped" >&2
  exit 1
fi
