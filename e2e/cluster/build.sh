#!/bin/bash
# From scratch: Debian packages + Kubernetes v1.20.2 server binaries (apiserver, controller-manager, scheduler,
# kubelet, kube-proxy) built from Debian bookworm's "kubernetes" source package with Debian's Go 1.19,
# + local images (pause, busybox). Only the machine's own Debian package sources are contacted.
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
W=${W:-${FERRY_CACHE:-$HOME/.cache/ferry}/kube/build}; OUTBIN=${OUTBIN:-$W/bin}
WHAT=${WHAT:-"cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy"}
mkdir -p $W/apt/lists/partial $W/apt/cache/archives/partial $W/src $OUTBIN
t0=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
# build: go 1.19, reflect2 fix, dpkg-dev (apt-get source); control plane: etcd-server;
# node: containerd 1.6.20 (CRI), runc 1.1.5, CNI plugins 1.1.1, iptables 1.8.9 (nft), conntrack, socat;
# images: gcc/libc6-dev (static pause), busybox-static; cleanup: nftables (to drop the empty nft tables)
apt-get install -y -q --no-install-recommends golang-1.19-go etcd-server rsync golang-github-modern-go-reflect2-dev dpkg-dev \
  containerd runc containernetworking-plugins iptables conntrack socat nftables busybox-static gcc libc6-dev bc curl openssl >/dev/null
t1=$(date +%s); echo "apt install: $((t1-t0))s"
# deb-src entries derived from the machine's own apt sources (deb822 *.sources and/or sources.list),
# kept in a private apt state dir so /etc/apt is not touched
mkdir -p $W/apt/sources.list.d; : > $W/apt/sources.list
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && sed 's/^Types: deb$/Types: deb-src/' "$f" > $W/apt/sources.list.d/$(basename "$f")
done
[ -f /etc/apt/sources.list ] && sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > $W/apt/sources.list
APTO="-o Dir::Etc::SourceList=$W/apt/sources.list -o Dir::Etc::SourceParts=$W/apt/sources.list.d -o Dir::State::Lists=$W/apt/lists -o Dir::Cache=$W/apt/cache"
apt-get $APTO update -q >/dev/null
(cd $W/src && apt-get $APTO source -q --download-only kubernetes=1.20.5+really1.20.2-1.1+deb12u1 >/dev/null 2>&1)
rm -rf $W/src/kubernetes-1.20.2 && tar xzf $W/src/kubernetes_1.20.5+really1.20.2.orig.tar.gz -C $W/src
t2=$(date +%s); echo "source fetch+extract: $((t2-t1))s"
K=$W/src/kubernetes-1.20.2
# Go>=1.18 fix: vendored modern-go/reflect2 v1.0.1 crashes (fatal error: fault in mapiterinit); use Debian's 1.0.2
rm -rf $K/vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 $K/vendor/github.com/modern-go/reflect2
rm -f $K/vendor/github.com/modern-go/reflect2/go.mod
sed -i 's#^\# github.com/modern-go/reflect2 v1.0.1 => github.com/modern-go/reflect2 v1.0.1#\# github.com/modern-go/reflect2 v1.0.2 => github.com/modern-go/reflect2 v1.0.2#' $K/vendor/modules.txt
# -tags=dockerless (upstream build tag): no dockershim and no cadvisor docker plugin, whose RootDir() probe
# otherwise stalls kubelet start-up for 5 s (5 x 1 s retries against the absent /var/run/docker.sock)
cd $K
mkdir -p $W/home
env PATH=/usr/lib/go-1.19/bin:$PATH HOME=$W/home GOPROXY=off GOFLAGS="${KUBE_GOFLAGS--tags=dockerless}" CGO_ENABLED=0 \
    KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 \
    GOLDFLAGS="-s -w" make WHAT="$WHAT" > $W/make.log 2>&1 || { tail -40 $W/make.log; exit 1; }
for b in $WHAT; do cp _output/bin/$(basename $b) $OUTBIN/; done
t3=$(date +%s); echo "make: $((t3-t2))s"
K=$K IMG=${IMG:-${FERRY_CACHE:-$HOME/.cache/ferry}/kube/images} $SELF/images.sh >/dev/null
t4=$(date +%s); echo "images: $((t4-t3))s; total $((t4-t0))s"
ls -la $OUTBIN
