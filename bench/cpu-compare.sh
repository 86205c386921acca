#!/bin/bash
# ferry-server vs llama.cpp's llama-server on this machine's CPU, same SmolLM2 GGUF, one
# ferry-bench invocation (levels interleaved, so both see the same machine). Results go to
# ${OUT:-bench-results/cpu}. Usage: bash bench/cpu-compare.sh [extra ferry-bench sweep args]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results/cpu}
SLOTS=${SLOTS:-4}
MODELS=$(bash e2e/models/fetch.sh | tail -1)
GGUF=$MODELS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA=$(bash bench/llama-cpp.sh | tail -1)
# Release build for this CPU, like llama.cpp's GGML_NATIVE=ON: candle's quantized kernels use
# AVX2/FMA/F16C only when compiled with them. Kept apart from the workspace's target/ (a full
# rebuild of mistral.rs); PORTABLE=1 uses the plain dev-profile binaries instead.
if [ "${PORTABLE:-0}" = 1 ]; then
  cargo build -q --locked -p ferry-server -p ferry-bench
  BIN=target/debug
else
  T=${FERRY_CACHE:-$HOME/.cache/ferry}/target-native
  CARGO_TARGET_DIR=$T RUSTFLAGS="-C target-cpu=native" cargo build -q --release --locked -p ferry-server -p ferry-bench
  BIN=$T/release
fi
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
"$BIN/ferry-server" --model-path "$MODELS/smollm2" --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
  --served-model-name smollm2 --port 8101 --max-num-seqs "$SLOTS" --max-queue 256 --max-seq-len 2048 \
  --log-format text > "${TMPDIR:-/tmp}/ferry-bench-ferry.log" 2>&1 &
pids+=($!)
"$LLAMA" -m "$GGUF" --port 8102 --host 127.0.0.1 -np "$SLOTS" -c $((2048 * SLOTS)) -t "$(nproc)" \
  --alias smollm2 > "${TMPDIR:-/tmp}/ferry-bench-llama.log" 2>&1 &
pids+=($!)
for url in http://127.0.0.1:8101/ready http://127.0.0.1:8102/health; do
  for _ in $(seq 1 120); do curl -sf "$url" >/dev/null && break; sleep 1; done
  curl -sf "$url" >/dev/null || { echo "not ready: $url" >&2; exit 1; }
done
"$BIN/ferry-bench" sweep --url ferry=http://127.0.0.1:8101 --compare llama.cpp=http://127.0.0.1:8102 \
  --model smollm2 --concurrency 1,2,4 --prompt-tokens 128 --output-tokens 64 --requests-per-level ${REQUESTS:-8} \
  --out "$OUT" "$@"
