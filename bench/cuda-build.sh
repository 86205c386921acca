#!/bin/bash
# Builds `ferry-server --features cuda` (mistral.rs on CUDA) on a machine with no GPU and no CUDA
# install, for the GPU machine the `device` tool lends (H100, driver for CUDA 13.0):
#   - a CUDA 13.0 toolkit assembled from NVIDIA's PyPI wheels (nvcc, headers, runtime, cuBLAS,
#     cuRAND, NVRTC) under $FERRY_CACHE/cuda-13.0 (13.0, not newer: driver 580 rejects PTX from
#     a newer nvcc);
#   - kernels compiled for compute capability $CUDA_COMPUTE_CAP (default 90, the H100), so no GPU
#     is asked at build time;
#   - a stub libcuda.so.1 to link against, made from the driver API names cudarc binds; where the
#     binary runs, the driver's own libcuda.so.1 is loaded instead (NVIDIA's toolkit ships such
#     stubs; the wheels do not).
# The build goes to $FERRY_CACHE/cuda-target (the workspace's own target/ stays the CPU build).
# Prints the path of the zstd-compressed binary to carry to the GPU machine.
#   bash bench/cuda-build.sh
#   bash bench/cuda-build.sh --toolkit   only the toolkit and the stub; prints CUDA_HOME
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
CUDA=$CACHE/cuda-13.0
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
WHEELS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88)

if [ ! -f "$CUDA/.complete" ]; then
  echo "cuda-build: assembling the CUDA 13.0 toolkit from PyPI wheels in $CUDA" >&2
  VENV=$(bash e2e/models/venv.sh)
  rm -rf "$CUDA" "$CUDA.wheels" "$CUDA.unpacked"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$CUDA.wheels" "${WHEELS[@]}" >&2
  for w in "$CUDA.wheels"/*.whl; do
    python3 -m zipfile -e "$w" "$CUDA.unpacked"
  done
  mv "$CUDA.unpacked/nvidia/cu13" "$CUDA"
  rm -rf "$CUDA.wheels" "$CUDA.unpacked"
  chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*
  ln -s lib "$CUDA/lib64"
  # The names the linker looks for (the wheels carry only the versioned ones).
  for so in "$CUDA"/lib/lib*.so.[0-9]*; do
    base=$(basename "$so"); ln -sf "$base" "$CUDA/lib/${base%%.so.*}.so"
  done
  touch "$CUDA/.complete"
fi
export CUDA_HOME=$CUDA PATH=$CUDA/bin:$PATH
command -v zstd >/dev/null || apt-get install -y -q zstd >/dev/null
nvcc --version | tail -2 >&2

# The crates (the CUDA ones are optional dependencies, locked in Cargo.lock already).
cargo fetch --locked
STUB=$CUDA/lib/stubs/libcuda.so
if [ ! -f "$STUB" ]; then
  mkdir -p "$(dirname "$STUB")"
  # Every driver entry point of every cudarc version in the lock file.
  SOURCES=()
  for v in $(awk '/^name = "cudarc"/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock); do
    SOURCES+=("${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$v"/src/driver/sys/mod.rs)
  done
  grep -ho 'load::<_F>("cu[A-Za-z0-9_]*")' "${SOURCES[@]}" |
    sed 's/.*("//; s/")//' | sort -u | sed 's/.*/int &(void) { return 999; }/' > "$STUB.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB" "$STUB.c"
  echo "cuda-build: stub libcuda.so.1 with $(wc -l < "$STUB.c") driver functions" >&2
fi

if [ "${1:-}" = --toolkit ]; then echo "$CUDA"; exit 0; fi

export CARGO_TARGET_DIR=$CACHE/cuda-target
start=$(date +%s)
cargo build --release --locked -p ferry-server --features cuda >&2
echo "cuda-build: ferry-server built in $(( $(date +%s) - start )) s" >&2
BIN=$CARGO_TARGET_DIR/release/ferry-server
# Stripped and compressed again only when the build changed the binary (zstd -19 of ~120 MB
# takes a minute on 2 cores; the GPU kit and the server-cuda image call this script each time).
if [ ! "$BIN.zst" -nt "$BIN" ]; then
  strip -o "$BIN.stripped" "$BIN"
  zstd -q -f -19 -T0 "$BIN.stripped" -o "$BIN.zst"
fi
echo "cuda-build: needs $(objdump -p "$BIN" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')" >&2
echo "$BIN.zst"
