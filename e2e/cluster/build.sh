#!/bin/bash
# Builds the local Kubernetes from published Go modules into $KUBE_BIN (once; build.sh runs again only
# when e2e/cluster/go/ changes): kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
# kube-proxy (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3), containerd, its runc shim and ctr
# (github.com/containerd/containerd/v2); then the pause and busybox images. The node's other parts
# come from Debian: runc, the CNI plugins, iptables, conntrack, socat, nftables.
# Needs Go (the version in go/*/go.mod or newer) and the Go module proxy; ~10 min on 2 cores.
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
. "$SELF/env.sh"
command -v go >/dev/null || { echo "build.sh: Go is not installed (Ferry's local Kubernetes is built from Go modules; Go $(awk '$1 == "go" {print $2}' "$SELF/go/kubernetes/go.mod") or newer)" >&2; exit 1; }
t0=$(date +%s)
bash "$SELF/packages.sh"
t1=$(date +%s); echo "packages: $((t1-t0))s"

export CGO_ENABLED=0 GOFLAGS="-trimpath -buildvcs=false"
mkdir -p "$FERRY_CACHE/kube"; OUT=$(mktemp -d "$FERRY_CACHE/kube/bin.XXXXXX")
trap 'rm -rf "$OUT"' EXIT

# k8s.io/kubernetes: the version it reports (kubectl version, the Node, Helm's kubeVersion check) is
# set at link time, as its own build does (hack/lib/version.sh).
V=$KUBE_VERSION; minor=${V#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X $pkg.gitVersion=$V -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
done
(cd "$SELF/go/kubernetes" && go build -ldflags="$ldflags" -o "$OUT/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
t2=$(date +%s); echo "kubernetes $V: $((t2-t1))s"

(cd "$SELF/go/etcd" && go build -ldflags="-s -w" -o "$OUT/etcd" .)
t3=$(date +%s); echo "etcd: $((t3-t2))s"

# containerd: the tags of its own static build (no btrfs: that snapshotter needs cgo; the shim
# without gRPC, as upstream builds it).
CV=$(awk '$1 == "require" {print $3}' "$SELF/go/containerd/go.mod")
cldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CV"
(cd "$SELF/go/containerd" &&
  go build -tags "urfave_cli_no_docs no_btrfs" -ldflags="$cldflags" -o "$OUT/" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr &&
  go build -tags "urfave_cli_no_docs no_btrfs no_grpc" -ldflags="$cldflags" -o "$OUT/" \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2)
t4=$(date +%s); echo "containerd $CV: $((t4-t3))s"

kube_build_key > "$OUT/.built-from"
rm -rf "$KUBE_BIN"; mv "$OUT" "$KUBE_BIN"; trap - EXIT
bash "$SELF/images.sh" >/dev/null
t5=$(date +%s); echo "images: $((t5-t4))s; total $((t5-t0))s"
ls -la "$KUBE_BIN"
