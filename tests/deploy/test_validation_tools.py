"""The offline checks CI runs on the deployment: kustomize renders every overlay; the output
passes ``kubernetes-validate --strict`` (the custom resources it has no schema for pass the
schemas of their published APIs in crd_schemas.py), ``yamllint --strict``; the Dockerfile passes
``hadolint --failure-threshold warning``. All three tools come from the dev extra (PyPI)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from crd_schemas import SCHEMAS
from deploy_helpers import KUSTOMIZE, RENDERS, ROOT

KUBERNETES_VERSION = "1.32.0"  # the oldest Kubernetes these manifests target (preStop sleep: 1.30)


def tool(name: str) -> str:
    """A console script of the dev extra: next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: pip install -e '.[dev]'")
    return path


def test_every_overlay_renders(rendered: dict[str, list[dict]]) -> None:
    assert set(rendered) == set(RENDERS)
    for name, docs in rendered.items():
        kinds = {d["kind"] for d in docs}
        assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler"} <= kinds, name
    gateway = {"InferencePool", "HTTPRoute"}
    assert gateway <= {d["kind"] for d in rendered["overlays/gpu"]}
    assert gateway <= {d["kind"] for d in rendered["cpu+components"]}
    assert not gateway & {d["kind"] for d in rendered["overlays/cpu"]}  # optional there


@pytest.mark.parametrize("name", RENDERS)
def test_rendered_output_passes_strict_schema_validation(
    rendered: dict[str, list[dict]], name: str
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    jsonschema = pytest.importorskip("jsonschema")
    custom = 0
    for doc in rendered[name]:
        key = (doc["apiVersion"], doc["kind"])
        if key in SCHEMAS:
            jsonschema.validate(doc, SCHEMAS[key])
            custom += 1
        else:  # raises ValidationError (strict: unknown fields too) or SchemaNotFoundError
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert custom >= 1  # every render has at least the ServiceMonitor


def test_custom_resource_schemas_refuse_misspelt_fields(rendered: dict[str, list[dict]]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pool = next(d for d in rendered["overlays/gpu"] if d["kind"] == "InferencePool")
    wrong = {**pool, "spec": {**pool["spec"], "targetPortNumber": 8000}}  # the v1alpha2 field
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong, SCHEMAS[("inference.networking.k8s.io/v1", "InferencePool")])


def test_yamllint_passes_on_sources_and_renders(
    rendered_text: dict[str, str], tmp_path: Path
) -> None:
    files = []
    for name, text in rendered_text.items():
        files.append(tmp_path / f"{name.replace('/', '-')}.yaml")
        files[-1].write_text(text)
    done = subprocess.run(
        [tool("yamllint"), "--strict", "-c", str(ROOT / ".yamllint.yaml"), str(ROOT / "deploy"),
         *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_passes_at_the_warning_threshold() -> None:
    done = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_hadolint_ignore_is_justified() -> None:
    """An inline ignore must say why, in a comment right after it (the rule's code named)."""
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("ignore=")[1].split()[0]
            after = "\n".join(lines[i + 1 : i + 12])
            assert f"{rule} (" in after, f"line {i + 1}: ignore of {rule} without a reason"


def test_kustomize_sources_are_all_referenced() -> None:
    """No manifest lies next to a kustomization that does not list it (it would never deploy)."""
    import yaml

    for kustomization in KUSTOMIZE.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        listed = set(spec.get("resources", [])) | {
            p["path"] for p in spec.get("patches", []) if "path" in p
        }
        for manifest in kustomization.parent.glob("*.yaml"):
            if manifest.name != "kustomization.yaml":
                assert manifest.name in listed, f"{manifest} is not in {kustomization}"
