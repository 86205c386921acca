#!/bin/bash
# Builds the OCI image of one of Ferry's binaries (server, operator, router) from the workspace's
# debug build (the engine's dependencies are optimised, see Cargo.toml) without docker, and imports
# it into the running local cluster. Prints the image reference on its last line.
# Usage: ferry-image.sh server|operator|router|server-cuda [REF]
# The default REF is localhost/ferry/NAME:dev-<content hash>: a rebuilt binary gets a new tag, so
# `helm upgrade` and the operator roll pods onto it (a reused tag would keep the old image).
# server-cuda: ferry-server built with CUDA (bench/cuda-build.sh) with the CUDA runtime, cuBLAS,
# cuRAND and NVRTC in /usr/local/cuda/lib64; the driver (libcuda.so.1) comes from the node through
# the NVIDIA container runtime (the chart's gpu.runtimeClassName), as with NVIDIA's own images.
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?usage: ferry-image.sh server|operator|router|server-cuda [REF]}
case $NAME in server|operator|router) ;;
  server-cuda)
    BIN=$(bash bench/cuda-build.sh | tail -1); BIN=${BIN%.zst}.stripped
    CUDA=$(bash bench/cuda-build.sh --toolkit | tail -1)
    d=$(mktemp -d); mkdir -p "$d/root/usr/local/cuda/lib64"
    # The CUDA libraries the binary links (all but the driver), and NVRTC, which cudarc opens
    # by name when a kernel is compiled at run time.
    for lib in $(objdump -p "$BIN" | awk '/NEEDED/ {print $2}') libnvrtc.so.13 libnvrtc-builtins.so.13.0; do
      [ -e "$CUDA/lib/$lib" ] && [ "$lib" != libcuda.so.1 ] && cp -L "$CUDA/lib/$lib" "$d/root/usr/local/cuda/lib64/"
    done
    cp "$BIN" "$d/ferry-server"
    REF=${2:-localhost/ferry/server-cuda:dev-$(sha256sum "$d/ferry-server" | cut -c1-12)}
    IMAGE_ROOT=$d/root IMAGE_ENV='"LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64","NVIDIA_DRIVER_CAPABILITIES=compute,utility"' \
      bash e2e/cluster/images.sh bin "$d/ferry-server" "$REF" >/dev/null
    echo "ferry-image: $REF with $(ls "$d/root/usr/local/cuda/lib64" | tr '\n' ' ')" >&2
    rm -rf "$d"
    echo "$REF"
    exit 0 ;;
  *) echo "unknown binary: $NAME" >&2; exit 2;; esac
# The test build: the same features `cargo test --workspace` uses, so nothing is compiled twice.
cargo test -q --workspace --locked --no-run 2>/dev/null
[ -x "target/debug/ferry-$NAME" ] || { echo "ferry-image.sh: target/debug/ferry-$NAME was not built" >&2; exit 1; }
d=$(mktemp -d)
strip -o "$d/ferry-$NAME" "target/debug/ferry-$NAME"
REF=${2:-localhost/ferry/$NAME:dev-$(sha256sum "$d/ferry-$NAME" | cut -c1-12)}
bash e2e/cluster/images.sh bin "$d/ferry-$NAME" "$REF" >/dev/null
rm -rf "$d"
echo "$REF"
