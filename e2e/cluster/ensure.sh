#!/bin/bash
# Makes sure the local Kubernetes can start on this machine, building only what is missing: the Debian
# packages of the node, the Kubernetes/etcd/containerd binaries (built from Go modules by build.sh into
# $FERRY_CACHE/kube/bin, ~10 min on 2 cores, again only when e2e/cluster/go/ changes), the pause and
# busybox images, kubectl + helm. Prints the tools directory (kubectl, helm) on its last line.
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
. "$SELF/env.sh"
if [ "$(cat "$KUBE_BIN/.built-from" 2>/dev/null)" != "$(kube_build_key)" ]; then
  echo "ferry: building Kubernetes $KUBE_VERSION, etcd and containerd from Go modules into $KUBE_BIN (~10 min once)" >&2
  "$SELF/build.sh" >&2
else
  bash "$SELF/packages.sh"
fi
if [ ! -f "$KUBE_IMAGES/pause.oci.tar" ] || [ ! -f "$KUBE_IMAGES/busybox.oci.tar" ]; then
  "$SELF/images.sh" >&2
fi
"$SELF/tools.sh"
