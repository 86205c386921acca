# Sourced by the cluster scripts: where the local Kubernetes lives on this machine.
#   KUBE_VERSION  the Kubernetes release built from Go modules (read from go/kubernetes/go.mod)
#   KUBE_BIN      its binaries + etcd + containerd (built by build.sh, rebuilt when go/ changes)
#   KUBE_IMAGES   the pause and busybox images (OCI tarballs)
#   KUBE_TOOLS    kubectl + helm (tools.sh)
CLUSTER_DIR=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
FERRY_CACHE=${FERRY_CACHE:-$HOME/.cache/ferry}
KUBE_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$CLUSTER_DIR/go/kubernetes/go.mod")
KUBE_BIN=${KUBE_BIN:-$FERRY_CACHE/kube/bin}
KUBE_IMAGES=${KUBE_IMAGES:-$FERRY_CACHE/kube/images}
KUBE_TOOLS=${KUBE_TOOLS:-$FERRY_CACHE/kube/tools}
# Go's module and build caches, kept with Ferry's other caches.
export GOMODCACHE=${GOMODCACHE:-$FERRY_CACHE/go/mod} GOCACHE=${GOCACHE:-$FERRY_CACHE/go/build}
# What the binaries are built from: the wrapper modules (versions + checksums) and the recipe in
# build.sh (bump KUBE_RECIPE when its flags change), so a change there rebuilds them.
KUBE_RECIPE=1
kube_build_key() {
  { echo "$KUBE_RECIPE"; cat "$CLUSTER_DIR"/go/*/go.mod "$CLUSTER_DIR"/go/*/go.sum "$CLUSTER_DIR"/go/*/*.go; } | sha256sum | cut -c1-16
}
