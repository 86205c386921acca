#!/bin/bash
# Ferry's main job, one command: a real local Kubernetes with Ferry's CRDs and example resources.
# Builds what is missing (first run: ~8 min for Kubernetes from Debian's source), starts the
# cluster (or reuses a running one), installs the CRDs, applies manifests/examples, shows them,
# shows an invalid resource being rejected, and leaves the cluster up. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${FERRY_KUBE_RUN:-/tmp/ferry-kube}
NS=${FERRY_DEMO_NAMESPACE:-ferry-demo}
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "Checking the local Kubernetes build (cached in ${FERRY_CACHE:-$HOME/.cache/ferry}/kube)"
TOOLS=$(bash e2e/cluster/ensure.sh | tail -1)
export KUBECONFIG=$RUN/kubeconfig PATH=$TOOLS:$PATH
if [ -f "$RUN/apiserver.pid" ] && kill -0 "$(cat "$RUN/apiserver.pid")" 2>/dev/null; then
  step "Using the local Kubernetes already running at $RUN"
else
  step "Starting a local Kubernetes v1.20.2 (etcd, apiserver, scheduler, controllers, kubelet + containerd)"
  bash e2e/cluster/up.sh "$RUN"
fi
kubectl get nodes -o wide

step "Installing Ferry's CRDs (charts/ferry/crds)"
# --validate=false: kubectl's client-side check against a 1.20 server does not know the CEL rules
# (x-kubernetes-validations); the server drops them and the operator enforces the same rules.
kubectl apply --validate=false -f charts/ferry/crds/
kubectl wait --for=condition=Established --timeout=60s crd/modelversions.serving.ferry.dev crd/llmdeployments.serving.ferry.dev

step "Applying the examples (manifests/examples) in namespace $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply --validate=false -n "$NS" -f manifests/examples/

step "kubectl get modelversions,llmdeployments -n $NS"
kubectl get mv,llmd -n "$NS"

step "The API server filled in the defaults: kubectl get llmd smollm2-autoscaled -o jsonpath='{.spec}'"
kubectl get llmd smollm2-autoscaled -n "$NS" -o jsonpath='{.spec}' | python3 -m json.tool

step "Invalid resources are rejected with a specific message (manifests/invalid/llmd-canary-weight-100.yaml)"
if kubectl apply --validate=false -n "$NS" -f manifests/invalid/llmd-canary-weight-100.yaml; then
  echo "unexpected: the invalid resource was accepted" >&2; exit 1
fi

cat <<EOM

Ferry's resources are installed on a local Kubernetes, which keeps running. Talk to it with:
  export KUBECONFIG=$KUBECONFIG PATH=$TOOLS:\$PATH
  kubectl get llmd -n $NS
  kubectl explain llmd.spec.canary
Tear it down (stops every process it started and restores the machine):
  bash e2e/cluster/down.sh $RUN
EOM
