#!/usr/bin/env bash
# Build the wheel with the CUDA kernels here (nvcc, no GPU needed) for scripts/gpu_check.sh to take
# to the GPU machine: dist/kernels-*.whl, plus dist/COMMIT so its result files name the commit.
#   scripts/build_wheel.sh [ARCHS]      ARCHS: KERNELS_CUDA_ARCHS, default 90a
# NO_ISOLATION=1 builds in the current environment (it needs the build requirements of
# pyproject.toml installed): an isolated build puts CUTLASS's headers under a new temporary path
# each time, which recompiles every CUDA file; this way a rebuild compiles only what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist
isolation=()
[ "${NO_ISOLATION:-0}" = 1 ] && isolation=(--no-build-isolation)
KERNELS_CUDA_ARCHS=${1:-90a} python -m pip wheel --no-deps "${isolation[@]}" -w dist . >/dev/null
git rev-parse --short HEAD >dist/COMMIT
[ -z "$(git status --porcelain --untracked-files=no)" ] || echo "+dirty" >>dist/COMMIT
ls dist
