#!/bin/bash
# The Debian packages the local Kubernetes needs on the node (the rest is built from Go modules):
# runc and the CNI plugins (the bridge network), iptables/conntrack/nftables (kube-proxy, down.sh),
# socat (the API server's forwarder for pods), busybox-static + gcc/libc6-dev (the busybox and
# pause images), bc/curl/openssl/unzip (the scripts themselves).
set -euo pipefail
exec bash "$(dirname "$(readlink -f "$0")")/apt-install.sh" runc containernetworking-plugins iptables conntrack \
  socat nftables busybox-static gcc libc6-dev bc curl openssl unzip
