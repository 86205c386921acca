#!/bin/bash
# Ferry's main job, one command: a real local Kubernetes running Ferry, serving SmolLM2.
# Builds what is missing (first run, 2 cores: ~10 min for Kubernetes from its Go modules, ~19 min
# for Ferry with mistral.rs), starts the cluster (or reuses a running one), builds the images of
# ferry-server, ferry-operator, ferry-router and a SmolLM2 model image, installs Ferry with its Helm chart,
# applies manifests/quickstart.yaml, waits until the model is Available, asks it a question with
# the openai client through the router, then rolls out a canary to promotion and a faulty canary
# to an automatic rollback under client load, shows an invalid resource being rejected, and leaves
# everything running. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${FERRY_KUBE_RUN:-/tmp/ferry-kube}
NS=${FERRY_DEMO_NAMESPACE:-ferry-demo}
ROUTER_IP=${FERRY_ROUTER_IP:-10.0.0.80}   # the router Service's fixed address (Services: 10.0.0.0/24)
API=http://$ROUTER_IP:8080/v1
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
phase() { kubectl get llmd smollm2 -n "$NS" -o jsonpath='{.status.phase}' 2>/dev/null; }
stable() { kubectl get llmd smollm2 -n "$NS" -o jsonpath='{.status.stableVersion}' 2>/dev/null; }
# watch_llmd CONDITION SECONDS: prints `kubectl get llmd` when it changes until CONDITION holds.
watch_llmd() {
  local last="" t0=$SECONDS line
  while true; do
    line=$(kubectl get llmd smollm2 -n "$NS" --no-headers 2>/dev/null | tr -s ' ' | sed 's/ [^ ]*$//')
    [ "$line" != "$last" ] && echo "  [$((SECONDS - t0))s] $line" && last=$line
    eval "$1" && return 0
    [ $((SECONDS - t0)) -ge "$2" ] && { echo "timed out after $2 s" >&2; kubectl describe llmd smollm2 -n "$NS" >&2; stop_load; exit 1; }
    sleep 1
  done
}
# Background clients (3 at a time) sending short completions through the router while versions
# change (short, because SmolLM2 on 2 shared CPU cores takes ~1 s per request).
LOAD=$RUN/demo-load
start_load() {
  : > "$LOAD.ok"; : > "$LOAD.failed"; rm -f "$LOAD.stop"
  for c in 1 2 3; do
    ( while [ ! -f "$LOAD.stop" ]; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -m 60 "$API/completions" -H 'content-type: application/json' \
          -d '{"model": "smollm2", "prompt": "My favourite colour is", "max_tokens": 4}')
        [ "$code" = 200 ] && echo . >> "$LOAD.ok" || echo "$code" >> "$LOAD.failed"
      done ) &
  done
}
stop_load() { touch "$LOAD.stop"; wait; rm -f "$LOAD.stop"; }
load_report() { echo "  client requests so far: $(wc -l < "$LOAD.ok") succeeded, $(wc -l < "$LOAD.failed") failed"; }

step "Checking the local Kubernetes build (cached in ${FERRY_CACHE:-$HOME/.cache/ferry}/kube)"
TOOLS=$(bash e2e/cluster/ensure.sh | tail -1)
export KUBECONFIG=$RUN/kubeconfig PATH=$TOOLS:$PATH
VENV=${FERRY_CACHE:-$HOME/.cache/ferry}/venv
if [ -f "$RUN/apiserver.pid" ] && kill -0 "$(cat "$RUN/apiserver.pid")" 2>/dev/null; then
  step "Using the local Kubernetes already running at $RUN"
else
  step "Starting a local Kubernetes $(. e2e/cluster/env.sh; echo "$KUBE_VERSION") (etcd, apiserver, scheduler, controllers, kubelet + containerd)"
  bash e2e/cluster/up.sh "$RUN"
fi
kubectl get nodes -o wide

step "Building Ferry (the first run compiles mistral.rs: ~19 min on 2 cores) and its images (no docker: OCI tarballs imported into containerd)"
MODELS=$(bash e2e/models/fetch.sh | tail -1)
# The build the images take their binaries from (ferry-image.sh), shown as it goes: one line that
# counts the crates compiled (about 600 the first time; none when nothing changed).
show_build() {
  local n=0 verb crate rest
  while read -r verb crate rest; do
    [ "$verb" = Compiling ] && n=$((n + 1)) && printf '\r  compiled %d crates, now %-40s' "$n" "$crate"
  done
  [ "$n" = 0 ] || printf '\r  compiled %d crates%-46s\n' "$n" ""
}
if ! cargo test --workspace --locked --no-run 2>&1 | tee "$RUN/build.log" | show_build; then
  tail -40 "$RUN/build.log" >&2; echo "the build failed (whole log: $RUN/build.log)" >&2; exit 1
fi
for b in server operator router; do
  ref=$(FERRY_KUBE_RUN=$RUN bash e2e/cluster/ferry-image.sh $b | tail -1)
  echo "  $b image: $ref"; eval "IMG_${b^^}=\${ref}"
done
FERRY_KUBE_RUN=$RUN bash e2e/cluster/images.sh model "$MODELS/smollm2" localhost/ferry/model-smollm2:0.1.2 | tail -1 | sed 's/^/  model image: /'
# Earlier demos ran the operator and the router on the host; the chart runs them in the cluster.
for p in ferry-operator ferry-router; do
  [ -f "$RUN/$p.pid" ] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null; rm -f "$RUN/$p.pid"
done

step "Installing (or updating) Ferry's CRDs (charts/ferry/crds; helm installs CRDs but never updates them)"
kubectl apply -f charts/ferry/crds/ | sed 's/^/  /'

# The chart renders its Roles in the watched namespace (watchNamespace), so it exists first: on a
# fresh machine the install otherwise fails (namespaces "ferry-demo" not found), and an operator
# started before its Roles would wait out its watchers' backoff.
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

step "helm install ferry charts/ferry (CRDs, operator x2 with leader election, router, RBAC, dashboard)"
helm upgrade --install ferry charts/ferry -n ferry-system --create-namespace \
  --set images.server.repository="${IMG_SERVER%:*}",images.server.tag="${IMG_SERVER##*:}" \
  --set images.operator.repository="${IMG_OPERATOR%:*}",images.operator.tag="${IMG_OPERATOR##*:}" \
  --set images.router.repository="${IMG_ROUTER%:*}",images.router.tag="${IMG_ROUTER##*:}" \
  --set router.service.clusterIP=$ROUTER_IP --set watchNamespace="$NS" --set logFormat=text \
  --wait --timeout 180s | grep -v '^$' | sed 's/^/  /'
kubectl get deploy,svc,pods -n ferry-system

step "Applying manifests/quickstart.yaml (a ModelVersion and an LLMDeployment) in namespace $NS"
# A rerun tells the story from the start: the LLMDeployment of an earlier run goes first.
kubectl delete llmd smollm2 -n "$NS" --ignore-not-found --wait=true
kubectl apply -n "$NS" -f manifests/quickstart.yaml

step "Waiting until the LLMDeployment is Available (image copy, model load, warm-up)"
watch_llmd '[ "$(phase)" = Available ]' 180
kubectl get mv,llmd,deploy,svc,pods -n "$NS"

step "Asking SmolLM2 with the official openai Python client through the router at $API"
"$VENV/bin/python" - "$API" <<'PY'
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1], api_key="none")
raw = client.chat.completions.with_raw_response.create(model="smollm2", max_tokens=40, temperature=0,
    messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}])
r = raw.parse()
print("  answer:", r.choices[0].message.content.strip())
print("  usage: ", r.usage.prompt_tokens, "prompt +", r.usage.completion_tokens, "completion tokens")
print("  served by version", raw.headers["x-ferry-version"], "pod", raw.headers["x-ferry-pod"])
PY

step "Canary: smollm2-135m-q4-b16 (manifests/demo/canary.yaml) takes 50% of the traffic, is analysed, promoted"
start_load
kubectl apply -n "$NS" -f manifests/demo/canary.yaml
watch_llmd '[ "$(stable)" = smollm2-135m-q4-b16 ] && [ "$(phase)" = Available ]' 300
kubectl get events -n "$NS" --field-selector involvedObject.kind=LLMDeployment --sort-by=.lastTimestamp | tail -6
load_report

step "Faulty canary: smollm2-135m-q4-slow (8 s of injected latency, SLO 6 s) is rolled back on its own"
kubectl apply -n "$NS" -f manifests/demo/canary-faulty.yaml
watch_llmd '[ "$(phase)" = RolledBack ]' 300
echo "  RolledBack: $(kubectl get llmd smollm2 -n "$NS" -o jsonpath='{.status.conditions[?(@.type=="RolledBack")].message}')"
stop_load
load_report

step "Invalid resources are refused by the API server with a specific message (manifests/invalid/llmd-canary-is-stable.yaml, a CEL rule)"
if kubectl apply -n "$NS" -f manifests/invalid/llmd-canary-is-stable.yaml; then
  echo "unexpected: the invalid resource was accepted" >&2; exit 1
fi

cat <<EOM

Ferry serves SmolLM2 on a local Kubernetes, which keeps running. Talk to it with:
  export KUBECONFIG=$KUBECONFIG PATH=$TOOLS:\$PATH
  kubectl get llmd,mv -n $NS
  curl $API/models
  curl $API/chat/completions -H 'content-type: application/json' \\
    -d '{"model": "smollm2", "messages": [{"role": "user", "content": "Hi!"}]}'
  curl 'http://$ROUTER_IP:8080/internal/stats?window=5m'   # per-version latency, errors, tokens
  kubectl logs -n ferry-system deploy/ferry-operator        # (the standby replica's log says it stands by)
  kubectl apply -n $NS -f manifests/examples/   # more shapes (the operator serves them too)
The operator watches only namespace $NS (watchNamespace=$NS): resources applied elsewhere get no status.
Tear it down (stops every process it started and restores the machine):
  bash e2e/cluster/down.sh $RUN
EOM
