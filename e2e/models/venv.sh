#!/bin/bash
# The project's Python venv, $FERRY_CACHE/venv (default ~/.cache/ferry/venv), made when missing;
# prints its path. Shared by the model fetch, the llama.cpp build and the CUDA build. A fresh
# Debian has no venv module until python3-venv is installed, and a venv made without it has a
# python but no pip, so a failed attempt is removed before the retry.
set -euo pipefail
VENV=${FERRY_CACHE:-$HOME/.cache/ferry}/venv
if [ ! -x "$VENV/bin/pip" ]; then
  python3 -m venv "$VENV" 2>/dev/null || {
    rm -rf "$VENV"
    { apt-get install -y -q python3-venv >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }; } &&
      python3 -m venv "$VENV"
  }
fi
echo "$VENV"
