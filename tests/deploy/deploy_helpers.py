"""Rendering deploy/kubernetes and finding objects in it (the fixtures are in conftest.py).

Everything here runs offline: ``kubectl kustomize`` (Debian's kubectl on these machines and in
CI) renders; the tests skip with a reason where kubectl is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
COMPONENTS = ("inference-gateway", "s3-store")
# What each render is: an overlay as shipped, or the cpu overlay with every optional component.
RENDERS = ("base", "overlays/cpu", "overlays/gpu", "cpu+components")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl): cannot render kustomize")
    return path


def render_text(name: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    args = [kubectl(), "kustomize"]
    if name == "cpu+components":  # a throwaway overlay: the cpu one plus every component
        folder = tmp_path_factory.mktemp("overlay")
        (folder / "kustomization.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kustomize.config.k8s.io/v1beta1",
                    "kind": "Kustomization",
                    "resources": [os.path.relpath(KUSTOMIZE / "overlays" / "cpu", folder)],
                    "components": [
                        os.path.relpath(KUSTOMIZE / "components" / c, folder) for c in COMPONENTS
                    ],
                }
            )
        )
        args += ["--load-restrictor", "LoadRestrictionsNone", str(folder)]
    else:
        args.append(str(KUSTOMIZE / name))
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {name} failed:\n{done.stderr}"
    return done.stdout


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def has(docs: list[dict], kind: str, name: str) -> bool:
    return any(d["kind"] == kind and d["metadata"]["name"] == name for d in docs)
