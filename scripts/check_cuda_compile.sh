#!/usr/bin/env bash
# CI compile check of the CUDA backend, no GPU needed: every csrc/cuda/**/*.cu through nvcc for
# sm_90a (gencode form, as the build makes it), every csrc/cuda/**/*.cpp through the host compiler
# against the torch headers of the given (or PATH's) python, with the build's flags. Prints one
# summary line; exits non-zero on any error, after printing the failing compiler output.
#
#   scripts/check_cuda_compile.sh [PYTHON]   (NVCC, CXX override the compilers; JOBS, default nproc)
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${1:-$(command -v python || command -v python3)}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
CXX=${CXX:-c++}
[ -x "$NVCC" ] || { echo "check_cuda_compile: FAILED: nvcc not found (set NVCC)" >&2; exit 1; }

TORCH_INCLUDE=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'include'))") ||
  { echo "check_cuda_compile: FAILED: $PY cannot import torch" >&2; exit 1; }
# The runtime headers nvcc itself uses (the host files need cuda_runtime_api.h).
CUDA_INCLUDE=$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ INCLUDES="-I\([^"]*\)".*/\1/p')
# CUTLASS headers from the nvidia-cutlass wheel (found as platforms/cuda/build.cmake finds them).
CUTLASS=$("$PY" -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('cutlass_library').submodule_search_locations[0], 'source'))") ||
  { echo "check_cuda_compile: FAILED: $PY has no nvidia-cutlass (pip install nvidia-cutlass)" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$ROOT"
mapfile -t CU < <(find csrc/cuda -name '*.cu' | sort)
mapfile -t CPP < <(find csrc/cuda -name '*.cpp' | sort)
start=$(date +%s)
JOBS=${JOBS:-$(nproc)}

# Each file compiles as a job of its own, JOBS at a time (CUTLASS's files take minutes each);
# a job leaves its compiler output in LOG and, if it failed, LOG.failed.
compile() {  # compile LOG COMMAND...
  local log=$1; shift
  "$@" >"$log" 2>&1 || touch "$log.failed"
}
throttle() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done; }
for f in "${CU[@]}"; do
  throttle
  compile "$TMP/$(basename "$f").log" "$NVCC" -std=c++17 -O3 --use_fast_math \
    --expt-relaxed-constexpr -gencode arch=compute_90a,code=sm_90a -Xptxas -v -Icsrc \
    -I"$CUTLASS/include" -I"$CUTLASS/tools/util/include" -c "$f" -o "$TMP/$(basename "$f").o" &
done
for f in "${CPP[@]}"; do
  throttle
  compile "$TMP/$(basename "$f").log" "$CXX" -std=c++17 -O1 -Wall -fPIC \
    -DTORCH_TARGET_VERSION=0x020a000000000000 -I"$TORCH_INCLUDE" -I"$CUDA_INCLUDE" -Icsrc \
    -c "$f" -o "$TMP/$(basename "$f").o" &
done
wait
failed=()
for marker in "$TMP"/*.failed; do
  [ -e "$marker" ] || continue
  failed+=("$marker")
  cat "${marker%.failed}" >&2
done

# ptxas reports every kernel's spills; they are not errors, but the summary counts them.
spilling=$(cat "$TMP"/*.cu.log 2>/dev/null | grep -c '[1-9][0-9]* bytes spill stores')
summary="${#CU[@]} .cu (sm_90a) + ${#CPP[@]} .cpp, $spilling kernels spilling, $(( $(date +%s) - start )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "check_cuda_compile: FAILED ${#failed[@]} of $(( ${#CU[@]} + ${#CPP[@]} )): $summary"
  exit 1
fi
echo "check_cuda_compile: OK: $summary"
