#!/bin/bash
# Ferry's main job, one command: a real local Kubernetes running Ferry, serving SmolLM2.
# Builds what is missing (first run: ~8 min for Kubernetes from Debian's source, ~15 min for
# mistral.rs), starts the cluster (or reuses a running one), installs the CRDs, builds the
# ferry-server image and a SmolLM2 model image, starts the operator and the router, applies
# manifests/quickstart.yaml, waits until the model is Available, asks it a question through the
# router's OpenAI API, shows an invalid resource being rejected, and leaves everything running.
# Needs root.
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

step "Building Ferry (first run compiles mistral.rs: ~15 min) and the ferry-server image"
MODELS=$(bash e2e/models/fetch.sh | tail -1)
SERVER_IMAGE=$(FERRY_KUBE_RUN=$RUN bash e2e/cluster/server-image.sh | tail -1)
echo "server image: $SERVER_IMAGE"

step "Packaging SmolLM2 as a model image (busybox + the GGUF under /models)"
FERRY_KUBE_RUN=$RUN bash e2e/cluster/images.sh model "$MODELS/smollm2" localhost/ferry/model-smollm2:0.1.2 | tail -1

step "Starting ferry-operator for namespace $NS (logs: $RUN/ferry-operator.log)"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
if [ -f "$RUN/ferry-operator.pid" ] && kill -0 "$(cat "$RUN/ferry-operator.pid")" 2>/dev/null; then
  kill "$(cat "$RUN/ferry-operator.pid")"; sleep 1
fi
nohup target/debug/ferry-operator --server-image "$SERVER_IMAGE" --metrics-address 127.0.0.1:9464 \
  --router-endpoint http://127.0.0.1:8080/v1 --router-stats-url http://127.0.0.1:8080 \
  --watch-namespace "$NS" --lease-namespace "$NS" --log-format text >"$RUN/ferry-operator.log" 2>&1 &
echo $! > "$RUN/ferry-operator.pid"

step "Starting ferry-router, the OpenAI endpoint, on http://127.0.0.1:8080/v1 (logs: $RUN/ferry-router.log)"
if [ -f "$RUN/ferry-router.pid" ] && kill -0 "$(cat "$RUN/ferry-router.pid")" 2>/dev/null; then
  kill "$(cat "$RUN/ferry-router.pid")"; sleep 1
fi
nohup target/debug/ferry-router --host 127.0.0.1 --port 8080 --watch-namespace "$NS" \
  --log-format text >"$RUN/ferry-router.log" 2>&1 &
echo $! > "$RUN/ferry-router.pid"

step "Applying manifests/quickstart.yaml (a ModelVersion and an LLMDeployment) in namespace $NS"
kubectl apply --validate=false -n "$NS" -f manifests/quickstart.yaml

step "Waiting until the LLMDeployment is Available (pull, weight copy, model load, warm-up)"
for i in $(seq 1 180); do
  kubectl get llmd smollm2 -n "$NS" --no-headers 2>/dev/null | tr -s ' ' | sed "s/^/  [${i}s] /"
  [ "$(kubectl get llmd smollm2 -n "$NS" -o jsonpath='{.status.phase}')" = Available ] && break
  sleep 2
done
kubectl wait --for=condition=Available --timeout=10s llmd/smollm2 -n "$NS"
kubectl get mv,llmd,deploy,svc,pods -n "$NS"

step "Asking SmolLM2 through the router's OpenAI API at http://127.0.0.1:8080/v1"
for i in $(seq 1 30); do curl -sf http://127.0.0.1:8080/ready >/dev/null && break; sleep 1; done
curl -sS -D "$RUN/demo-headers" "http://127.0.0.1:8080/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "smollm2", "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}], "max_tokens": 40, "temperature": 0}' \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print("  answer:", r["choices"][0]["message"]["content"].strip()); print("  usage: ", r["usage"])'
grep -i '^x-ferry' "$RUN/demo-headers" | sed 's/^/  /'

step "Invalid resources are rejected with a specific message (manifests/invalid/llmd-canary-weight-100.yaml)"
if kubectl apply --validate=false -n "$NS" -f manifests/invalid/llmd-canary-weight-100.yaml; then
  echo "unexpected: the invalid resource was accepted" >&2; exit 1
fi

cat <<EOM

Ferry serves SmolLM2 on a local Kubernetes, which keeps running. Talk to it with:
  export KUBECONFIG=$KUBECONFIG PATH=$TOOLS:\$PATH
  kubectl get llmd,mv -n $NS
  curl http://127.0.0.1:8080/v1/models
  curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi!"}]}'
  curl 'http://127.0.0.1:8080/internal/stats?window=5m'   # per-version latency, errors, tokens
  kubectl apply --validate=false -n $NS -f manifests/examples/   # more shapes (the operator serves them too)
The operator and the router run on this host (logs $RUN/ferry-operator.log, $RUN/ferry-router.log).
Tear it down (stops every process it started and restores the machine):
  bash e2e/cluster/down.sh $RUN
EOM
