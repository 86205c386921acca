#!/bin/bash
# Builds the OCI image of one of Ferry's binaries (server, operator, router) from the workspace's
# debug build (the engine's dependencies are optimised, see Cargo.toml) without docker, and imports
# it into the running local cluster. Prints the image reference on its last line.
# Usage: ferry-image.sh server|operator|router [REF]
# The default REF is localhost/ferry/NAME:dev-<content hash>: a rebuilt binary gets a new tag, so
# `helm upgrade` and the operator roll pods onto it (a reused tag would keep the old image).
set -euo pipefail
cd "$(dirname "$0")/../.."
NAME=${1:?usage: ferry-image.sh server|operator|router [REF]}
case $NAME in server|operator|router) ;; *) echo "unknown binary: $NAME" >&2; exit 2;; esac
# The test build: the same features `cargo test --workspace` uses, so nothing is compiled twice.
cargo test -q --workspace --locked --no-run 2>/dev/null
[ -x "target/debug/ferry-$NAME" ] || { echo "ferry-image.sh: target/debug/ferry-$NAME was not built" >&2; exit 1; }
d=$(mktemp -d)
strip -o "$d/ferry-$NAME" "target/debug/ferry-$NAME"
REF=${2:-localhost/ferry/$NAME:dev-$(sha256sum "$d/ferry-$NAME" | cut -c1-12)}
bash e2e/cluster/images.sh bin "$d/ferry-$NAME" "$REF" >/dev/null
rm -rf "$d"
echo "$REF"
