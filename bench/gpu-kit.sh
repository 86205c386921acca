#!/bin/bash
# Builds, here (no GPU needed), everything the GPU benchmark needs on the lent GPU machine (no Rust,
# no network there) and packs it, xz-compressed, into one ignored folder that the device tool
# carries: bench/gpu-kit/ (under 64 MiB with the working tree; the script fails if it is over).
#   ferry-server --features cuda   kernels for sm_$CUDA_COMPUTE_CAP (bench/cuda-build.sh)
#   llama-server, llama-quantize   llama.cpp with CUDA for the same compute capability, from the
#                                  source the CPU peer is built from (bench/llama-cpp.sh --source)
#   ferry-bench                    the load generator
#   gguf-py                        llama.cpp's own GGUF writer (bench/gpu-model.py writes the GGUF)
#   tokenizer/                     SmolLM2's tokenizer as tokenizer.json + its GGUF metadata
# Every build is cached under $FERRY_CACHE (default ~/.cache/ferry) and redone only when missing.
#   bash bench/gpu-kit.sh            the GPU kit (bench/gpu-kit)
#   bash bench/gpu-kit.sh --cpu      the same kit from the CPU builds (bench/gpu-kit-cpu), which
#                                    bench/gpu-run.sh --rehearse runs on this machine
# Prints the kit's folder last.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
MODE=gpu; [ "${1:-}" = --cpu ] && MODE=cpu
LIMIT=$((64 * 1024 * 1024))
log() { echo "gpu-kit: $*" >&2; }
command -v xz >/dev/null || apt-get install -y -q xz-utils >/dev/null
VENV=$(bash e2e/models/venv.sh)
MODELS=$(bash e2e/models/fetch.sh | tail -1)
LLAMA_SRC=$(bash bench/llama-cpp.sh --source | tail -1)

if [ $MODE = gpu ]; then
  KIT=bench/gpu-kit
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  CUDA=$(bash bench/cuda-build.sh --toolkit | tail -1)
  L=$CACHE/llama.cpp-cuda$CUDA_COMPUTE_CAP
  # llama.cpp with CUDA. The default, LLAMA_CUDA=there, carries its source (8.7 MB) and
  # bench/gpu-run.sh builds it on the GPU machine's 16 cores (nvcc and cmake are there) while the
  # model is made. LLAMA_CUDA=here builds it here (about 40 minutes of nvcc on 2 cores) and carries
  # the binaries, but they do not fit today: static llama-server and llama-quantize carry every
  # CUDA kernel each (42 + 40 MB compressed), so the kit is 98 MiB and the size check refuses it.
  LLAMA_CUDA=${LLAMA_CUDA:-there}
  log "llama.cpp with CUDA: built $LLAMA_CUDA"
  if [ "$LLAMA_CUDA" = here ] && { [ ! -x "$L/build/bin/llama-server" ] || [ ! -x "$L/build/bin/llama-quantize" ]; }; then
    log "building llama.cpp with CUDA for sm_$CUDA_COMPUTE_CAP (long on 2 cores)"
    "$VENV/bin/python" -c 'import cmake' 2>/dev/null || bash bench/llama-cpp.sh >/dev/null
    # Static ggml (one self-contained binary each); the CUDA runtime and cuBLAS stay shared
    # libraries, found on the GPU machine (bench/gpu-run.sh); the driver is linked against the
    # stub libcuda.so that bench/cuda-build.sh made. No -march=native: the GPU machine's CPU is
    # not this one.
    PATH=$CUDA/bin:$PATH CUDA_PATH=$CUDA "$VENV/bin/cmake" -S "$LLAMA_SRC" -B "$L/build" \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF -DGGML_CUDA=ON \
      -DGGML_CUDA_NCCL=OFF -DCMAKE_CUDA_ARCHITECTURES="$CUDA_COMPUTE_CAP" \
      -DCMAKE_CUDA_COMPILER="$CUDA/bin/nvcc" -DCUDAToolkit_ROOT="$CUDA" \
      -DCMAKE_LIBRARY_PATH="$CUDA/lib/stubs" >&2
    start=$(date +%s)
    PATH=$CUDA/bin:$PATH "$VENV/bin/cmake" --build "$L/build" --target llama-server llama-quantize \
      -j "$(nproc)" >&2
    log "llama.cpp (CUDA) built in $(( $(date +%s) - start )) s"
  fi
  LLAMA_BIN=$L/build/bin
  FERRY_ZST=$(bash bench/cuda-build.sh | tail -1)
  FERRY_BIN=${FERRY_ZST%.zst}.stripped
  # ferry-bench has no GPU code: a plain release build, beside the CUDA build's dependencies.
  CARGO_TARGET_DIR=$CACHE/cuda-target cargo build -q --release --locked -p ferry-bench >&2
  BENCH_BIN=$CACHE/cuda-target/release/ferry-bench
else
  KIT=bench/gpu-kit-cpu
  LLAMA_BIN=$(dirname "$(bash bench/llama-cpp.sh | tail -1)")
  # The test build (the features `cargo test --workspace` uses): nothing is compiled twice.
  cargo test -q --workspace --locked --no-run >&2
  cargo build -q --locked -p ferry-bench >&2
  FERRY_BIN=target/debug/ferry-server
  BENCH_BIN=target/debug/ferry-bench
fi

rm -rf "$KIT.new"; mkdir -p "$KIT.new/tokenizer"
pack() { # pack NAME FILE: a stripped, xz-compressed copy
  strip -o "$KIT.new/$1" "$2" 2>/dev/null || cp "$2" "$KIT.new/$1"
  xz -T0 -6 "$KIT.new/$1"
}
pack ferry-server "$FERRY_BIN"
if [ $MODE = gpu ] && [ "$LLAMA_CUDA" = there ]; then
  b=$(basename "$LLAMA_SRC")
  tar -C "$(dirname "$LLAMA_SRC")" --exclude="$b/.git" --exclude="$b/docs" --exclude="$b/models" \
    --exclude="$b/media" --exclude=__pycache__ --transform "s,^$b,llama.cpp," \
    -cJf "$KIT.new/llama.cpp-src.tar.xz" "$b"
else
  pack llama-server "$LLAMA_BIN/llama-server"
  pack llama-quantize "$LLAMA_BIN/llama-quantize"
fi
pack ferry-bench "$BENCH_BIN"
tar -C "$LLAMA_SRC" --exclude=__pycache__ --exclude=tests -cJf "$KIT.new/gguf-py.tar.xz" gguf-py
"$VENV/bin/python" bench/gpu-model.py --tokenizer-from \
  "$MODELS/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$KIT.new/tokenizer"
xz -T0 -9 "$KIT.new"/tokenizer/*
echo "$MODE" > "$KIT.new/MODE"
rm -rf "$KIT"; mv "$KIT.new" "$KIT"

kit=$(du -sb "$KIT" | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
log "kit $KIT: $(( kit / 1024 / 1024 )) MiB ($kit bytes); with the working tree $(( (kit + tree) / 1024 / 1024 )) MiB of 64"
du -b "$KIT"/* | sed 's/^/gpu-kit:   /' >&2
if [ $MODE = gpu ] && [ $(( kit + tree )) -gt $LIMIT ]; then
  log "FAIL: the kit and the working tree are over the 64 MiB the device tool carries"
  exit 1
fi
echo "$KIT"
