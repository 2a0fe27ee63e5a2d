#!/usr/bin/env bash
# The companion of tools/gpu_check.sh, run on a development machine that reaches a package
# registry: downloads the wheels the bare GPU machine lacks (it has no registry) into
# .gpu-wheels/ (ignored by git; the device tool carries it: carry=[".gpu-wheels"]).
#
#   tools/gpu_wheels.sh [DEST]          DEST defaults to .gpu-wheels
#
# What the GPU machine lacks (docs/gpu.md): scipy-openblas32 and platformdirs (lstmcore's
# dependencies). pybind11 and scikit-build-core are there in versions nobody has read, so
# they come too and gpu_check.sh installs them only where the machine's own are too old.
# Every wheel here is pure Python or py3-none-manylinux, so one set serves the GPU machine's
# CPython 3.12 and CI's own interpreter alike. One version of each (two would stop the
# install); about 9 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.gpu-wheels}
python=${PYTHON:-python3}
# the requirements as pyproject.toml states them (build-system and dependencies)
reqs=('scipy-openblas32>=0.3.28' 'platformdirs>=3' 'pybind11>=3' 'scikit-build-core>=0.10')

mkdir -p "$dest"
rm -f "$dest"/*.whl
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$dest" "${reqs[@]}"

# one wheel per project, each named
for project in scipy_openblas32 platformdirs pybind11 scikit_build_core; do
  count=$(find "$dest" -maxdepth 1 -name "${project}-*.whl" | wc -l)
  if [[ $count -ne 1 ]]; then
    echo "gpu_wheels: expected one ${project} wheel in $dest, found $count" >&2
    exit 1
  fi
done
ls -1 "$dest"
du -sh "$dest" | cut -f1 | sed 's/^/total: /'
