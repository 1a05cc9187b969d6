#!/usr/bin/env bash
# Build the wheel with the CUDA kernels here (nvcc, no GPU needed) for scripts/gpu_check.sh to take
# to the GPU machine: dist/kernels-*.whl, plus dist/COMMIT so its result files name the commit.
#   scripts/build_wheel.sh [ARCHS]      ARCHS: KERNELS_CUDA_ARCHS, default 90a
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
KERNELS_CUDA_ARCHS=${1:-90a} python -m pip wheel --no-deps -w dist . >/dev/null
git rev-parse --short HEAD >dist/COMMIT
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "+dirty" >>dist/COMMIT
ls dist
