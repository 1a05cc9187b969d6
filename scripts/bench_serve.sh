#!/usr/bin/env bash
# Online against offline serving throughput, one workload, one run (issue 7, acceptance 6):
#   1. kernels bench offline: the engine in-process (writes serve_offline.json);
#   2. kernels serve with the same model and engine settings, in the background;
#   3. kernels bench serve against it at concurrency CONCURRENCY, its record taking step 1's as
#      peer serve_offline (writes serve_online.json);
#   4. the server is stopped (SIGTERM) and its log kept.
#
#   scripts/bench_serve.sh OUT
# env: MODEL (llama-3-8b; empty: the default SmolLM2), LOAD_FORMAT (dummy), DTYPE (bfloat16), DEVICE (cuda), NUM_REQUESTS (64),
#      INPUT_LEN (128), OUTPUT_LEN (128), CONCURRENCY (64), PORT (30000), THREADS (unset: torch's
#      choice; CPU runs set it), PYTHON (python3)
set -uo pipefail
OUT=${1:?usage: scripts/bench_serve.sh OUT}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
MODEL=${MODEL-llama-3-8b}
LOAD_FORMAT=${LOAD_FORMAT:-dummy}
DTYPE=${DTYPE:-bfloat16}
DEVICE=${DEVICE:-cuda}
N=${NUM_REQUESTS:-64}
IN=${INPUT_LEN:-128}
OUTLEN=${OUTPUT_LEN:-128}
CONC=${CONCURRENCY:-64}
PORT=${PORT:-30000}
model_args=(--load-format "$LOAD_FORMAT" --dtype "$DTYPE" --device "$DEVICE")
offline_model=()
if [ -n "$MODEL" ]; then model_args=("$MODEL" "${model_args[@]}"); offline_model=(--model); fi
[ -n "${THREADS:-}" ] && threads=(--threads "$THREADS") || threads=()

$PY -m kernels.cli bench offline "${offline_model[@]}" "${model_args[@]}" "${threads[@]}" --num-requests "$N" --input-len "$IN" \
  --output-len "$OUTLEN" --peers none --json "$OUT/serve_offline.json" >"$OUT/bench_offline.log" 2>&1 ||
  { echo "bench offline failed:"; tail -20 "$OUT/bench_offline.log"; exit 1; }
tail -12 "$OUT/bench_offline.log"

$PY -m kernels.cli serve "${model_args[@]}" "${threads[@]}" --port "$PORT" >"$OUT/serve.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server' EXIT
for _ in $(seq 600); do
  grep -q "listening on" "$OUT/serve.log" && break
  kill -0 $server 2>/dev/null || { echo "kernels serve exited:"; tail -20 "$OUT/serve.log"; exit 1; }
  sleep 0.5
done
grep "listening on" "$OUT/serve.log" || { echo "kernels serve did not start"; exit 1; }

$PY -m kernels.cli bench serve --port "$PORT" --num-requests "$N" --input-len "$IN" --output-len "$OUTLEN" \
  --max-concurrency "$CONC" --offline-result "$OUT/serve_offline.json" --json "$OUT/serve_online.json" \
  2>&1 | tee "$OUT/bench_serve.log"
exit "${PIPESTATUS[0]}"
