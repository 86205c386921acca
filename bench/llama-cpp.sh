#!/bin/bash
# Builds llama.cpp's OpenAI-compatible server (the CPU peer of ferry-bench's comparison) from the
# source inside the PyPI sdist llama-cpp-python==0.3.36 (vendor/llama.cpp), with cmake from PyPI.
# Cached in $FERRY_CACHE/llama.cpp (default ~/.cache/ferry); prints the llama-server path last.
# `--source` only fetches the source and prints its directory (the GPU kit builds it for CUDA).
set -euo pipefail
CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
D=$CACHE/llama.cpp
BIN=$D/build/bin/llama-server
SOURCE_ONLY=0; [ "${1:-}" = --source ] && SOURCE_ONLY=1
if [ $SOURCE_ONLY = 0 ] && [ -x "$BIN" ] && [ -x "$D/build/bin/llama-quantize" ]; then echo "$BIN"; exit 0; fi
mkdir -p "$D"
VENV=$(bash "$(dirname "$0")/../e2e/models/venv.sh")
# cmake from PyPI; scikit-build-core so that pip can read the sdist's metadata without building
# its build dependencies from source.
"$VENV/bin/python" -c 'import cmake, scikit_build_core' 2>/dev/null ||
  "$VENV/bin/pip" install -q --disable-pip-version-check cmake==4.1.3 scikit-build-core==1.1.2 >&2
if [ ! -f "$D/src/CMakeLists.txt" ]; then
  t=$(mktemp -d)
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
    llama-cpp-python==0.3.36 -d "$t" >&2
  tar xzf "$t"/llama_cpp_python-0.3.36.tar.gz -C "$t"
  rm -rf "$D/src"; mv "$t/llama_cpp_python-0.3.36/vendor/llama.cpp" "$D/src"; rm -rf "$t"
fi
if [ $SOURCE_ONLY = 1 ]; then echo "$D/src"; exit 0; fi
command -v g++ >/dev/null || apt-get install -y -q g++ >&2
echo "ferry: building llama.cpp's llama-server (CPU, a few minutes on 2 cores)" >&2
"$VENV/bin/cmake" -S "$D/src" -B "$D/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=ON >&2
"$VENV/bin/cmake" --build "$D/build" --target llama-server llama-quantize -j "$(nproc)" >&2
echo "$BIN"
