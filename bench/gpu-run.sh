#!/bin/bash
# The GPU benchmark, one command on the lent GPU machine (no Rust, no network there): unpacks the
# kit bench/gpu-kit.sh made, makes the ~1B model (bench/gpu-model.py; Q4_K_M with llama-quantize),
# starts on the GPU ferry-server on the GGUF, llama.cpp's llama-server on the same GGUF and
# ferry-server on the BF16 safetensors, runs one `ferry-bench sweep` over the three (levels
# interleaved, 128 in / 128 out, ignore_eos), samples GPU memory, writes results.{md,csv,json},
# the plots, summary.md and logs.tar.xz to $OUT, prints the summary and stops everything. Every
# phase has its own time budget; the whole stays under 8 minutes.
#   bash bench/gpu-run.sh              on the GPU machine (device tool: carry bench/gpu-kit)
#   bash bench/gpu-run.sh --rehearse   the same script here: CPU builds (bench/gpu-kit.sh --cpu),
#                                      the tiny model, small levels
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu; [ "${1:-}" = --rehearse ] && MODE=rehearse
if [ $MODE = gpu ]; then
  KIT=${KIT:-bench/gpu-kit}; OUT=${OUT:-bench-results/gpu}
  LEVELS=${LEVELS:-1,8,32,64}; REQUESTS=${REQUESTS:-16}; ROUNDS=${ROUNDS:-2}; TOKENS=128
  SLOTS=64; DEVICE=cuda:0; MODEL_FLAG=; PY=python3; DTYPE=bf16
else
  KIT=${KIT:-bench/gpu-kit-cpu}; OUT=${OUT:-bench-results/gpu-rehearsal}
  LEVELS=${LEVELS:-1,2}; REQUESTS=${REQUESTS:-4}; ROUNDS=${ROUNDS:-1}; TOKENS=16
  SLOTS=2; DEVICE=cpu; MODEL_FLAG=--tiny; PY=$(bash e2e/models/venv.sh)/bin/python
  DTYPE=f16  # candle's CPU matmul has no BF16
fi
[ -f "$KIT/MODE" ] || { echo "gpu-run: no kit at $KIT (bash bench/gpu-kit.sh$([ $MODE = rehearse ] && echo ' --cpu'))" >&2; exit 1; }
W=${FERRY_GPU_WORK:-${TMPDIR:-/tmp}/ferry-gpu-run}
rm -rf "$W"; mkdir -p "$W/bin" "$W/tok" "$W/logs" "$OUT"
rm -f "$OUT"/results.* "$OUT"/*.png "$OUT/summary.md" "$OUT/logs.tar.xz"
T0=$(date +%s); PHASES=()
pids=()
# Stops every server, the sampler and a build: SIGTERM, then SIGKILL after 10 s (llama-server has
# been seen to stay up after a SIGTERM, which would hang the script's end).
stop() {
  local all=(${pids[@]+"${pids[@]}"} $(cat "$W"/*.pid 2>/dev/null)) p
  for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 20); do
    local alive=0
    for p in "${all[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.5
  done
  for p in "${all[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT
log() { echo "gpu-run [+$(( $(date +%s) - T0 ))s] $*" >&2; }
# phase NAME BUDGET_S FUNCTION: runs one phase in this shell (the servers it starts stay this
# script's children) under its own time limit: a watchdog stops this script's children when the
# budget is spent, which fails the phase.
phase() {
  local name=$1 budget=$2 t wd; t=$(date +%s); shift 2
  log "$name (budget ${budget}s)"
  ( sleep "$budget"; echo "$name" > "$W/overran"; pkill -TERM -P $$ ) & wd=$!
  if ! "$@"; then
    local why=failed; [ -f "$W/overran" ] && why="ran past ${budget}s"
    log "FAIL: $name $why"; PHASES+=("| $name | $(( $(date +%s) - t )) | $budget | FAILED ($why) |")
    kill $wd 2>/dev/null || true
    summary; exit 1
  fi
  kill $wd 2>/dev/null || true
  PHASES+=("| $name | $(( $(date +%s) - t )) | $budget | ok |")
}
summary() {
  {
    echo "# GPU run ($MODE) on $(uname -n), $(date -u +%FT%TZ)"
    echo
    if [ $MODE = gpu ]; then nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/GPU: /'; fi
    echo
    echo "| phase | seconds | budget | |"; echo "|---|---|---|---|"
    printf '%s\n' "${PHASES[@]}"
    echo "| total | $(( $(date +%s) - T0 )) | 570 | |"
    echo
    if [ -f "$W/memory.md" ]; then cat "$W/memory.md"; fi
    if [ -f "$OUT/results.md" ]; then cat "$OUT/results.md"; fi
  } > "$OUT/summary.md"
  python3 -c 'import sys, tarfile; t = tarfile.open(sys.argv[1], "w:xz"); t.add(sys.argv[2], arcname="logs"); t.close()' \
    "$OUT/logs.tar.xz" "$W/logs" || true
  cat "$OUT/summary.md"
}

unxz() { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; }
# (errexit does not apply inside a phase's function: each step that can fail says `|| return 1`.)
unpack() {
  for f in "$KIT"/*.xz; do
    case $f in */llama.cpp-src.tar.xz) ;;  # built below
      *.tar.xz) python3 -m tarfile -e "$f" "$W" || return 1 ;;
      *) unxz "$f" "$W/bin/$(basename "${f%.xz}")" || return 1 ;; esac
  done
  chmod +x "$W"/bin/*
  for f in "$KIT"/tokenizer/*.xz; do
    unxz "$f" "$W/tok/$(basename "${f%.xz}")" || return 1
  done
}
phase unpack 60 unpack

if [ $MODE = gpu ]; then
  # The CUDA runtime, cuBLAS, cuRAND and NVRTC: the toolkit's own, else the pip wheels PyTorch uses.
  LIBS=$(python3 - <<'EOF'
import glob, os, site
dirs = [d for d in ("/usr/local/cuda/lib64", "/usr/local/cuda/lib", "/usr/local/nvidia/lib64") if os.path.isdir(d)]
for root in site.getsitepackages():
    for lib in sorted(glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True)):
        if os.path.dirname(lib) not in dirs:
            dirs.append(os.path.dirname(lib))
print(":".join(dirs))
EOF
)
  export LD_LIBRARY_PATH=$LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  { nvidia-smi -L; nvcc --version 2>&1 | tail -1; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    ldd "$W/bin/ferry-server"; } > "$W/logs/machine.txt" 2>&1 || true
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 500 \
    > "$W/logs/gpu.csv" 2>/dev/null & pids+=($!)
fi
for b in "$W"/bin/*; do
  if ldd "$b" | grep 'not found'; then log "FAIL: $(basename "$b") misses libraries (LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-})"; exit 1; fi
done
export FERRY_BENCH_FONT=${FERRY_BENCH_FONT:-$(python3 -c 'import matplotlib, os; print(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data/fonts/ttf/DejaVuSans.ttf"))' 2>/dev/null || true)}
[ -f "$FERRY_BENCH_FONT" ] || unset FERRY_BENCH_FONT

export HF_HOME=$W/hf  # mistral.rs wants a writable one even for local files
M=$W/model

# A kit made while the local CUDA build of llama.cpp was missing carries its source instead
# (LLAMA_CUDA=there bash bench/gpu-kit.sh): it is built here, on every core, while the model is
# made and the first ferry-server starts.
if [ -f "$KIT/llama.cpp-src.tar.xz" ]; then
  python3 -m tarfile -e "$KIT/llama.cpp-src.tar.xz" "$W"
  (
    export PATH=$PATH:/usr/local/cuda/bin
    G=(); command -v ninja >/dev/null && G=(-G Ninja)
    cmake -S "$W/llama.cpp" -B "$W/llama-build" ${G[@]+"${G[@]}"} -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON -DGGML_CUDA=ON -DGGML_CUDA_NCCL=OFF \
      -DCMAKE_CUDA_ARCHITECTURES="${CUDA_COMPUTE_CAP:-90}" &&
      cmake --build "$W/llama-build" --target llama-server llama-quantize -j "$(nproc)" &&
      cp "$W/llama-build/bin/llama-server" "$W/llama-build/bin/llama-quantize" "$W/bin/"
  ) > "$W/logs/llama-build.log" 2>&1 &
  echo $! > "$W/llama-build.pid"
fi

model() {
  FERRY_GGUF_PY=$W/gguf-py "$PY" bench/gpu-model.py $MODEL_FLAG "$W/tok" "$M" || return 1
  ls -la "$M"/gguf "$M"/st
}
phase model 120 model

ferry() { # ferry NAME PORT GPU_SHARE ARGS...
  local name=$1 port=$2 pa=(); [ $MODE = gpu ] && pa=(--paged-attention-gpu-memory "$3"); shift 3
  "$W/bin/ferry-server" "$@" --served-model-name bench --model-version "$name" --port "$port" \
    --host 127.0.0.1 --device $DEVICE ${pa[@]+"${pa[@]}"} --max-num-seqs $SLOTS \
    --max-queue 4096 --max-seq-len 4096 --log-format text > "$W/logs/$name.log" 2>&1 &
  pids+=($!); echo $! > "$W/$name.pid"
}
up() { # up URL: a 2xx answer (curl, else Python: the GPU machine's image is not ours)
  if command -v curl >/dev/null; then curl -sf -m 2 "$1" >/dev/null
  else python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; fi
}
ready() { # ready URL NAME
  while ! up "$1"; do
    kill -0 "$(cat "$W/$2.pid")" 2>/dev/null || { log "$2 exited:"; tail -20 "$W/logs/$2.log" >&2; return 1; }
    sleep 1
  done
}
# The paged KV cache takes a share of the whole GPU less what is in use when it is sized, so the
# two ferry-servers start one after the other, the second with the larger share.
start_safetensors() {
  ferry ferry-safetensors 8103 0.25 --model-path "$M/st" --format safetensors --dtype $DTYPE
  ready http://127.0.0.1:8103/ready ferry-safetensors || return 1
}
phase start-safetensors 180 start_safetensors

if [ -f "$W/llama-build.pid" ]; then
  build_wait() {
    local p; p=$(cat "$W/llama-build.pid")
    while kill -0 "$p" 2>/dev/null; do sleep 2; done
    [ -x "$W/bin/llama-server" ] || { tail -30 "$W/logs/llama-build.log" >&2; return 1; }
  }
  phase llama-build 420 build_wait
fi

quantize() {
  "$W/bin/llama-quantize" "$M/gguf/model-f16.gguf" "$M/gguf/model-q4_k_m.gguf" Q4_K_M "$(nproc)" \
    > "$W/logs/quantize.log" 2>&1 || { tail -20 "$W/logs/quantize.log" >&2; return 1; }
  rm "$M/gguf/model-f16.gguf"
  ls -la "$M/gguf"
}
phase quantize 90 quantize

start() {
  # llama.cpp: every layer on the GPU, one slot per client of the highest level.
  NGL=(); [ $MODE = gpu ] && NGL=(-ngl 999)
  "$W/bin/llama-server" -m "$M/gguf/model-q4_k_m.gguf" --host 127.0.0.1 --port 8102 --alias bench \
    -np $SLOTS -c $((SLOTS * 1024)) ${NGL[@]+"${NGL[@]}"} > "$W/logs/llama.cpp.log" 2>&1 &
  pids+=($!); echo $! > "$W/llama.cpp.pid"
  ferry ferry-gguf 8101 0.5 --model-path "$M/gguf" --gguf-file model-q4_k_m.gguf
  ready http://127.0.0.1:8101/ready ferry-gguf || return 1
  ready http://127.0.0.1:8102/health llama.cpp
}
phase start 120 start

sweep() {
  # llama.cpp first: the ratio table then reads "ferry-server's tokens/s as a share of llama.cpp's".
  "$W/bin/ferry-bench" sweep --url llama.cpp=http://127.0.0.1:8102 --compare ferry-gguf=http://127.0.0.1:8101 \
    --compare ferry-safetensors=http://127.0.0.1:8103 --model bench --concurrency "$LEVELS" \
    --prompt-tokens 128 --output-tokens $TOKENS --requests-per-level "$REQUESTS" --rounds "$ROUNDS" \
    --timeout-seconds 120 --out "$OUT" 2>&1 | tee "$W/logs/sweep.log"
}
phase sweep 240 sweep

if [ $MODE = gpu ]; then
  {
    echo "GPU memory in use per server after the sweep (nvidia-smi; the paged KV cache is sized at start):"
    echo; echo "| server | pid | MiB |"; echo "|---|---|---|"
    apps=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null || true)
    for s in ferry-gguf llama.cpp ferry-safetensors; do
      p=$(cat "$W/$s.pid"); echo "| $s | $p | $(echo "$apps" | awk -F', ' -v p="$p" '$1 == p {print $2}') |"
    done
    echo; echo "Whole GPU, peak during the run: $(awk -F', ' '{gsub(/ MiB/, "", $2); if ($2 > m) m = $2} END {print m}' "$W/logs/gpu.csv") MiB"
    echo
  } > "$W/memory.md"
fi
summary
