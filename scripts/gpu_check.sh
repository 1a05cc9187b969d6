#!/usr/bin/env bash
# On a machine with an NVIDIA GPU, in one go: install the wheel built elsewhere (dist/*.whl, from
# scripts/build_wheel.sh; building here is the fallback), run the GPU tests, the CPU tests on this host's wider ISA, and the named
# benchmarks; write logs and result files into OUT and pack them into OUT/gpu_check.tar.gz.
#
#   scripts/gpu_check.sh OUT [--no-tests] [OP[:SHAPE,SHAPE...] ...]
#     OP: a `kernels bench` op name, or `all` (default: none), optionally with its shapes, or
#     serve_online (scripts/bench_serve.sh: offline engine, then server + load generator);
#     --no-tests: benchmarks only (a second call within one device lease, when tests and benchmarks
#     together outrun its 10 minutes). BENCH_TIMEOUT (s, default 400) bounds each benchmark;
#     CPU_TESTS=0 skips the CPU suite on this host (when only CUDA code changed since it last ran);
#     GPU_TESTS="tests/ops/test_fp8.py ..." runs those GPU tests only (default: all of tests/).
set -uo pipefail
OUT=${1:?usage: scripts/gpu_check.sh OUT [--no-tests] [OP ...]}
shift
RUN_TESTS=1
if [ "${1:-}" = "--no-tests" ]; then RUN_TESTS=0; shift; fi
mkdir -p "$OUT/work"
LOG="$OUT/work"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

step() { echo "== $*" | tee -a "$LOG/summary.txt"; }

# Extra wheels (liger-kernel, ...) carried in .whl/ go to a private site dir.
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi

wheel=$(ls dist/kernels-*.whl 2>/dev/null | head -1)
# The copy of the tree here has no git history: scripts/build_wheel.sh recorded the commit.
KERNELS_COMMIT=$(tr -d '\n' <dist/COMMIT 2>/dev/null || echo unknown)
export KERNELS_COMMIT
if [ -n "$wheel" ]; then
  step "install $wheel"
  $PY -m pip install -q --no-deps --force-reinstall "$wheel" >"$LOG/install.log" 2>&1 || status=1
else
  step "build here (no dist/*.whl was brought)"
  KERNELS_CUDA_ARCHS=${KERNELS_CUDA_ARCHS:-90a} $PY -m pip install -q --no-deps --no-build-isolation . >"$LOG/install.log" 2>&1 || status=1
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv >"$LOG/nvidia-smi.txt" 2>&1
$PY -m kernels.cli info >"$LOG/info.txt" 2>&1 || status=1

if [ $RUN_TESTS = 1 ]; then
  step "pytest -m gpu"
  $PY -m pytest -m gpu -q -p no:cacheprovider ${GPU_TESTS:-tests} >"$LOG/pytest_gpu.log" 2>&1 || status=1
  tail -3 "$LOG/pytest_gpu.log" | tee -a "$LOG/summary.txt"

  # The CPU backend on this host's Xeon (AVX-512 with bf16/fp16, AMX): every ISA variant it can run.
  if [ "${CPU_TESTS:-1}" = 1 ]; then
    step "pytest CPU ops"
    $PY -m pytest -m "not gpu" -q -p no:cacheprovider tests/ops >"$LOG/pytest_cpu.log" 2>&1 || status=1
    tail -1 "$LOG/pytest_cpu.log" | tee -a "$LOG/summary.txt"
  fi
fi

for spec in "$@"; do
  if [ "$spec" = serve_online ]; then  # the server against the offline engine: scripts/bench_serve.sh
    step "scripts/bench_serve.sh (serve_offline, then kernels serve + kernels bench serve)"
    timeout "${BENCH_TIMEOUT:-400}" scripts/bench_serve.sh "$LOG/serve" >"$LOG/bench_serve.log" 2>&1 || status=1
    tail -40 "$LOG/bench_serve.log"
    mkdir -p "$LOG/results" && cp "$LOG"/serve/serve_*.json "$LOG/results/" 2>/dev/null
    continue
  fi
  op=${spec%%:*}
  shapes=()
  [ "$spec" != "$op" ] && shapes=(--shapes "${spec#*:}")
  step "kernels bench $spec"
  timeout "${BENCH_TIMEOUT:-400}" $PY -m kernels.cli bench "$op" "${shapes[@]}" --device cuda --json "$LOG/results" \
    --plot "$LOG/$op.png" >"$LOG/bench_$op.log" 2>&1 || status=1
  tail -40 "$LOG/bench_$op.log"
done

echo; cat "$LOG/summary.txt"
tar -czf "$OUT/gpu_check.tar.gz" -C "$OUT" work && rm -rf "$OUT/work"
exit $status
