#!/usr/bin/env bash
# The GPU check: on a bare machine with an NVIDIA GPU and no package registry, install offline,
# build for that GPU, run the CUDA tests with LSTMCORE_REQUIRE_GPU=1 (a skip is a failure),
# compute-sanitizer (memcheck, initcheck) over a small case, then the benchmark against
# torch.nn.LSTM (cuDNN, TF32 off and on). Each stage has its own time limit, and all of them
# together at most LSTMCORE_GPU_CHECK_BUDGET seconds (480), so a hang costs one stage, not the
# run; LSTMCORE_GPU_LIMIT_<STAGE> overrides one stage's limit (CI builds on 2 slow cores).
# docs/gpu.md says how to run it through the device tool.
#
#   tools/gpu_check.sh OUTDIR [--stages install,build,tests,sanitizer,bench]
#   tools/gpu_check.sh OUTDIR --selftest    (the stage runner alone: a stage that hangs)
#
# OUTDIR receives gpu_check.log (everything), summary.txt (one line per stage), tests.xml,
# sanitizer.log, table.md and bench.json. Exit status: 0 when every stage ran and passed.
#
# Before: tools/gpu_wheels.sh on a machine with a registry fills .gpu-wheels/ (carried along).
# The machine's own python3 (LSTMCORE_GPU_PYTHON) provides numpy, tqdm, cmake, ninja, pytest,
# nvidia-cublas, packaging, pathspec and, for the benchmark, torch. Nothing is installed into
# that environment: the carried wheels and lstmcore go into a folder of their own
# (--target, on PYTHONPATH), which also works when python3 is itself a virtual environment
# (a venv made from one with --system-site-packages would not see its packages).
# shellcheck disable=SC2317  # the stage functions run through run_stage (bash -c)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$PWD

out=${1:-}
if [[ -z $out || $out == --* ]]; then
  echo "usage: tools/gpu_check.sh OUTDIR [--stages a,b,...] [--selftest]" >&2
  exit 2
fi
shift
stages="install,build,tests,sanitizer,bench"
selftest=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --stages) stages=$2; shift 2 ;;
    --selftest) selftest=1; shift ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
log=$out/gpu_check.log
summary=$out/summary.txt
: >"$log"
: >"$summary"

budget=${LSTMCORE_GPU_CHECK_BUDGET:-480}
start_all=$(date +%s)
deadline=$((start_all + budget))
failed=0

say() { echo "$*" | tee -a "$log"; }

# run_stage NAME LIMIT FUNCTION: the function in a shell of its own with its output in the
# log, stopped (with everything it started: timeout signals its whole process group) after
# LIMIT seconds or when the overall budget runs out, whichever comes first
run_stage() {
  local name=$1 limit=$2 fn=$3 now remaining begin rc took status
  now=$(date +%s)
  remaining=$((deadline - now))
  if ((remaining < 3)); then
    status="SKIPPED (the ${budget} s budget is spent)"
    printf '%-10s %s\n' "$name" "$status" | tee -a "$summary" "$log"
    failed=1
    return 1
  fi
  local own="LSTMCORE_GPU_LIMIT_${name^^}"  # e.g. LSTMCORE_GPU_LIMIT_BUILD=900 on a slow host
  [[ -n ${!own:-} ]] && limit=${!own}
  ((limit > remaining)) && limit=$remaining
  say "==== stage $name (limit ${limit} s) $(date -u +%H:%M:%S)"
  begin=$(date +%s)
  export -f "${fn?}"
  timeout --kill-after=5 "$limit" bash -c "$fn" >>"$log" 2>&1
  rc=$?
  took=$(($(date +%s) - begin))
  if ((rc == 124 || rc == 137)); then
    status="TIMEOUT after ${limit} s (stopped)"
  elif ((rc == 0)); then
    status="ok (${took} s)"
  else
    status="FAILED rc=$rc (${took} s)"
  fi
  printf '%-10s %s\n' "$name" "$status" | tee -a "$summary" "$log"
  if ((rc != 0)); then
    failed=1
    echo "---- last lines of stage $name:"
    tail -n 40 "$log" | grep -v '^====' || true
    return 1
  fi
  return 0
}

# skip NAME WHY: a stage that cannot run because an earlier one failed
skip() {
  printf '%-10s %s\n' "$1" "SKIPPED ($2)" | tee -a "$summary" "$log"
  failed=1
}

finish() {
  say "==== total $(($(date +%s) - start_all)) s of ${budget} s"
  echo "---- summary ($summary)"
  cat "$summary"
  [[ -f $out/table.md ]] && { echo "---- table ($out/table.md)"; cat "$out/table.md"; }
  exit "$failed"
}

if ((selftest)); then
  # the runner on three stages: one passes, one hangs past its 2 s limit (a child of its own
  # too), one runs after it
  quick() { true; }
  hang() { sleep 60 & sleep 61; }
  after() { true; }
  run_stage quick 5 quick
  run_stage hang 2 hang
  run_stage after 5 after
  finish
fi

has_stage() { [[ ",$stages," == *",$1,"* ]]; }

py=${LSTMCORE_GPU_PYTHON:-python3}
wheels=${LSTMCORE_GPU_WHEELS:-$repo/.gpu-wheels}
arch=${LSTMCORE_GPU_ARCH:-90}
work=${LSTMCORE_GPU_WORK:-/tmp/lstmcore-gpu-check}
site=$work/site
export PYTHONPATH=$site
export PYTHONUNBUFFERED=1
# offline means offline: no pip configuration may add an index or a folder of links
export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS
export LSTMCORE_CUDA=ON

# nvcc: PATH, then $CUDA_HOME/bin, /usr/local/cuda/bin (CMake looks only at PATH and
# $CUDA_PATH/bin)
nvcc=$(command -v nvcc || true)
for dir in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
  [[ -z $nvcc && -n $dir && -x $dir/bin/nvcc ]] && nvcc=$dir/bin/nvcc
done
if [[ -n $nvcc ]]; then
  export CUDACXX=$nvcc
  PATH=$(dirname "$nvcc"):$PATH
  export PATH
fi
sanitizer=$(command -v compute-sanitizer || true)
[[ -z $sanitizer && -n $nvcc && -x $(dirname "$nvcc")/compute-sanitizer ]] &&
  sanitizer=$(dirname "$nvcc")/compute-sanitizer

{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) stages=$stages budget=${budget}s"
  echo "python: $(command -v "$py") ($("$py" -c 'import sys; print(sys.version.split()[0])' 2>&1))"
  echo "nvcc: ${nvcc:-not found} $([[ -n $nvcc ]] && "$nvcc" --version | tail -n 1)"
  echo "compute-sanitizer: ${sanitizer:-not found}"
  echo "wheels: $wheels: $(cd "$wheels" 2>/dev/null && printf '%s ' *.whl)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
      --format=csv,noheader 2>&1
  else
    echo "nvidia-smi: not on PATH"
  fi
} >>"$log" 2>&1
head -n 7 "$log"

# ---- install: the carried wheels, offline, into $site --------------------------------------
stage_install() {
  set -e
  rm -rf "$site"
  mkdir -p "$site"
  # what the machine must provide itself (checked, never installed)
  "$py" - <<'EOF'
import importlib, importlib.metadata as md
need = {"numpy": "1.24", "tqdm": "4.60", "pytest": "8", "cmake": "3.24", "ninja": "1.10",
        "packaging": "23.2", "pathspec": "0.12", "nvidia-cublas": "0"}
from packaging.version import Version
missing = []
for name, least in need.items():
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        missing.append(f"{name} (not installed)")
        continue
    if Version(have) < Version(least):
        missing.append(f"{name} {have} < {least}")
    print(f"machine: {name} {have}")
if missing:
    raise SystemExit("the machine lacks: " + ", ".join(missing))
EOF
  local -a carried=("$wheels"/scipy_openblas32-*.whl "$wheels"/platformdirs-*.whl)
  # pybind11 and scikit-build-core only where the machine's own are missing or too old
  local project least file
  for spec in "pybind11 3 pybind11" "scikit-build-core 0.10 scikit_build_core"; do
    read -r project least file <<<"$spec"
    if ! "$py" -c "import importlib.metadata as m, sys; from packaging.version import Version as V; sys.exit(V(m.version('$project')) < V('$least'))" 2>/dev/null; then
      carried+=("$wheels"/"$file"-*.whl)
      echo "carried: $project (the machine's is missing or older than $least)"
    fi
  done
  for whl in "${carried[@]}"; do
    [[ -f $whl ]] || { echo "missing wheel: $whl (run tools/gpu_wheels.sh first)"; exit 1; }
  done
  "$py" -m pip install --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" "${carried[@]}"
  "$py" -c "import scipy_openblas32, platformdirs; print('site:', scipy_openblas32.__file__)"
}

# ---- build: lstmcore with the CUDA module for sm_$arch only, no build isolation ------------
stage_build() {
  set -e
  [[ -n $nvcc ]] || { echo "no nvcc on PATH, in \$CUDA_HOME/bin or /usr/local/cuda/bin"; exit 1; }
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$py" -m pip install -v --no-index --no-deps \
    --no-build-isolation --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$site" --upgrade \
    -C build-dir="$work/build" \
    -C cmake.define.LSTMCORE_CUDA=ON \
    -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$arch" \
    -C cmake.define.CMAKE_CUDA_COMPILER="$nvcc" \
    "$repo"
  # the installed package, not the checkout, and its CUDA module loads
  (cd / && "$py" - <<'EOF'
import lstmcore
from lstmcore import cuda
print("lstmcore:", lstmcore.__file__)
print("_cuda:", cuda.module_path())
module = cuda.load_module()
print("cuBLAS from:", cuda.cublas_location())
print("available:", cuda.available())
EOF
  )
}

# ---- tests: every CUDA test, a skip counts as a failure --------------------------------------
stage_tests() {
  LSTMCORE_REQUIRE_GPU=1 "$py" -m pytest -q -p no:cacheprovider -rs \
    --junitxml="$out/tests.xml" tests/unit/test_cuda.py tests/mnist/test_cuda_train.py
}

# ---- sanitizer: memcheck and initcheck over a small case ----------------------------------------
stage_sanitizer() {
  set -eo pipefail
  [[ -n $sanitizer ]] || { echo "compute-sanitizer not found"; exit 1; }
  local tool
  for tool in memcheck initcheck; do
    echo "== compute-sanitizer --tool $tool" | tee -a "$out/sanitizer.log"
    "$sanitizer" --tool "$tool" --error-exitcode 3 --print-limit 30 \
      "$py" tools/gpu_bench.py --sanitizer-case 2>&1 | tee -a "$out/sanitizer.log"
  done
}

# ---- bench: lstmcore (pedantic, --tf32) against cuDNN (TF32 off, on) -------------------------
stage_bench() {
  "$py" tools/gpu_bench.py --out "$out"
}

export py wheels arch work site nvcc sanitizer repo out
installed=1 built=1
if has_stage install; then run_stage install 30 stage_install || installed=0; fi
if has_stage build; then
  if ((installed)); then run_stage build 170 stage_build || built=0; else skip build "install failed"; built=0; fi
fi
for stage in tests:110 sanitizer:90 bench:70; do
  name=${stage%%:*}
  has_stage "$name" || continue
  if ((built)); then run_stage "$name" "${stage##*:}" "stage_$name"; else skip "$name" "no build"; fi
done
finish
