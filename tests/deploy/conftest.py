"""Fixtures for the deployment checks: the rendered kustomize output (``kubectl kustomize``;
skipped with a reason where kubectl is absent) and the options ``loraplex serve --help`` prints."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from deploy_helpers import RENDERS, ROOT, render_text


@pytest.fixture(scope="session")
def rendered_text(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return {name: render_text(name, tmp_path_factory) for name in RENDERS}


@pytest.fixture(scope="session")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict]]:
    return {
        name: [d for d in yaml.safe_load_all(text) if d] for name, text in rendered_text.items()
    }


@pytest.fixture(scope="session")
def serve_options() -> set[str]:
    """Every option ``loraplex serve --help`` prints."""
    done = subprocess.run(
        [sys.executable, "-m", "loraplex.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT / "server"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", done.stdout))
