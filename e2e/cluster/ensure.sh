#!/bin/bash
# Makes sure the local Kubernetes is buildable and startable on this machine, building only what is missing:
#   Debian packages (containerd, etcd, runc, CNI, iptables, ...), the v1.20.2 server binaries (built once from
#   Debian's source into $FERRY_CACHE/kube, ~6.5 min on 2 cores), the pause/busybox images, kubectl + helm.
# Prints the tools directory (kubectl, helm) on its last line.
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}/kube
BIN=$CACHE/build/bin
need_pkgs=""
for c in etcd containerd runc iptables-nft conntrack socat nft bc curl openssl gcc unzip; do
  command -v $c >/dev/null || need_pkgs=1
done
[ -d /usr/lib/cni ] || need_pkgs=1
missing_bin=""
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  [ -x $BIN/$b ] || missing_bin=1
done
if [ -n "$missing_bin" ]; then
  echo "ferry: building Kubernetes v1.20.2 from Debian's source into $CACHE (once, ~7 min)" >&2
  "$SELF/build.sh" >&2
elif [ -n "$need_pkgs" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends etcd-server containerd runc containernetworking-plugins iptables \
    conntrack socat nftables busybox-static gcc libc6-dev bc curl openssl unzip >/dev/null
fi
if [ ! -f $CACHE/images/pause.oci.tar ] || [ ! -f $CACHE/images/busybox.oci.tar ]; then
  command -v busybox >/dev/null || apt-get install -y -q --no-install-recommends busybox-static >/dev/null
  "$SELF/images.sh" >&2
fi
"$SELF/tools.sh"
