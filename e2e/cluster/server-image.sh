#!/bin/bash
# Builds the ferry-server OCI image from the workspace's debug binary (dependencies are built at
# opt-level 3, see Cargo.toml) without docker, and imports it into the running local cluster.
# Usage: server-image.sh [REF]   (default localhost/ferry/server:dev)
set -euo pipefail
cd "$(dirname "$0")/../.."
REF=${1:-localhost/ferry/server:dev}
# The test build: the same features `cargo test --workspace` uses, so nothing is compiled twice.
cargo test -q --workspace --locked --no-run 2>/dev/null
d=$(mktemp -d)
strip -o "$d/ferry-server" target/debug/ferry-server
bash e2e/cluster/images.sh bin "$d/ferry-server" "$REF" >/dev/null
rm -rf "$d"
echo "$REF"
