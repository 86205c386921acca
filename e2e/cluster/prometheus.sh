#!/bin/bash
# Prometheus from Debian's package (for the tests of the operator's Prometheus metrics source),
# unpacked under the cache rather than installed (no service, nothing in /etc). Prints the
# binary's path on the last line.
set -euo pipefail
DIR=${FERRY_CACHE:-$HOME/.cache/ferry}/prometheus
BIN=$DIR/root/usr/bin/prometheus
if [ ! -x "$BIN" ]; then
  mkdir -p "$DIR"
  rm -rf "$DIR/root" "$DIR"/*.deb
  (cd "$DIR" && { apt-get download prometheus >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get download prometheus >/dev/null; }; })
  dpkg-deb -x "$DIR"/prometheus_*.deb "$DIR/root"
  rm -f "$DIR"/*.deb
fi
"$BIN" --version 2>&1 | head -1 >&2
echo "$BIN"
