#!/usr/bin/env bash
# On a machine with an NVIDIA GPU and nvcc: build with LSTMCORE_CUDA=ON, run the CUDA tests,
# then benchmark a training step against torch.nn.LSTM (cuDNN) when torch is importable.
# Prints a short table last; meant to finish well under 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LSTMCORE_GPU_VENV:-/tmp/lstmcore-gpu-venv}
python3 -m venv --system-site-packages "$venv"   # keeps a preinstalled torch visible
# shellcheck disable=SC1091
. "$venv/bin/activate"
export LSTMCORE_CUDA=ON
pip install --quiet '.[test,cuda]'
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs
python tools/gpu_bench.py
