"""What schema validation cannot see in the rendered manifests: the probes' paths exist in the
app, ports and selectors agree across Deployment, Service, InferencePool and endpoint picker,
every server option exists in ``loraplex serve --help`` (and the whole argument list parses
into a valid config), the grace period covers preStop plus the drain, the gpu overlay runs on a
GPU, the hardening holds in every overlay."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from deploy_helpers import RENDERS, ROOT, find, has

from loraplex.cli import build_config, build_parser

GATEWAY_RENDERS = ("overlays/gpu", "cpu+components")
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def server(docs: list[dict]) -> tuple[dict, dict]:
    """(the Deployment, its loraplex container)."""
    deployment = find(docs, "Deployment", "loraplex")
    (container,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "loraplex"
    ]
    return deployment, container


def environment(docs: list[dict], container: dict) -> dict[str, str]:
    """The container's variables Kubernetes can expand in args: envFrom ConfigMaps, then env
    literal values (a secretRef's keys are unknown here)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            env[item["name"]] = find(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def resolved_args(docs: list[dict]) -> list[str]:
    _, container = server(docs)
    env = environment(docs, container)
    out = []
    for arg in container["args"]:
        missing = [v for v in VAR.findall(arg) if v not in env]
        assert not missing, f"{arg}: {missing} not defined (an unset $(VAR) stays literal)"
        out.append(VAR.sub(lambda m: env[m[1]], arg))
    return out


def option(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    assert len(values) == 1, f"{name}: {values}"
    return values[0]


def routes() -> set[str]:
    from loraplex.api.app import create_app
    from loraplex.config import Config

    return set(create_app(Config()).openapi()["paths"])


@pytest.mark.parametrize("name", RENDERS)
def test_every_args_option_exists_and_the_args_parse(
    rendered: dict[str, list[dict]], serve_options: set[str], name: str, tmp_path
) -> None:
    args = resolved_args(rendered[name])
    used = {a.split("=", 1)[0] for a in args}
    assert all(a.startswith("--") and "=" in a for a in args), args
    unknown = used - serve_options
    assert not unknown, f"not in `loraplex serve --help`: {unknown}"
    # The image's entrypoint options, then these: one valid config (values and ranges checked).
    # --model names the folder inside the image (test_dockerfile checks it): not here.
    known = [a for a in args if a.split("=", 1)[0] in serve_options - {"--model"}]
    # The keys file is the Secret's, read at start: a real one stands in for it here.
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": [{"key": "sk-test-0123456789", "tenant": "t", "role": "admin"}]}')
    known = [f"--api-keys-file={keys}" if a.startswith("--api-keys-file=") else a for a in known]
    parsed = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "8000", *known])
    build_config(parsed)


@pytest.mark.parametrize("name", RENDERS)
def test_probe_paths_exist_and_use_the_right_endpoints(
    rendered: dict[str, list[dict]], name: str
) -> None:
    _, container = server(rendered[name])
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert probes["readinessProbe"]["path"] == "/ready"  # 503 while draining
    assert probes["livenessProbe"]["path"] == "/health"  # 503 once the engine died
    ports = {p["name"] for p in container["ports"]}
    missing = {p["path"] for p in probes.values()} - routes()
    assert not missing, f"probed paths the app does not serve: {missing}"
    assert all(p["port"] in ports for p in probes.values())


@pytest.mark.parametrize("name", RENDERS)
def test_ports_and_selectors_agree(rendered: dict[str, list[dict]], name: str) -> None:
    docs = rendered[name]
    deployment, container = server(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == 8000 == int(option([*resolved_args(docs), "--port=8000"], "--port"))
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = find(docs, "Service", "loraplex")
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(8000, "http")]
    for kind in ("PodDisruptionBudget",):
        assert (
            find(docs, kind, "loraplex")["spec"]["selector"]["matchLabels"].items()
            <= labels.items()
        )
    policy = find(docs, "NetworkPolicy", "loraplex")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == ["http"]
    monitor = find(docs, "ServiceMonitor", "loraplex")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["http"]
    hpa = find(docs, "HorizontalPodAutoscaler", "loraplex")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "loraplex",
    }


@pytest.mark.parametrize("name", GATEWAY_RENDERS)
def test_inference_pool_selects_the_server_pods_and_names_the_picker(
    rendered: dict[str, list[dict]], name: str
) -> None:
    docs = rendered[name]
    deployment, container = server(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pool = find(docs, "InferencePool", "loraplex")["spec"]
    assert pool["selector"]["matchLabels"].items() <= labels.items()
    assert [p["number"] for p in pool["targetPorts"]] == [container["ports"][0]["containerPort"]]
    ref = pool["endpointPickerRef"]
    epp_service = find(docs, "Service", ref["name"])
    epp = find(docs, "Deployment", "loraplex-epp")
    assert (
        epp_service["spec"]["selector"].items()
        <= epp["spec"]["template"]["metadata"]["labels"].items()
    )
    (epp_port,) = [p for p in epp_service["spec"]["ports"] if p["port"] == ref["port"]["number"]]
    epp_ports = {
        p["name"]: p["containerPort"]
        for p in epp["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert epp_ports[epp_port["targetPort"]] == ref["port"]["number"]
    assert epp["spec"]["template"]["spec"]["containers"][0]["args"][:2] == [
        "--pool-name",
        "loraplex",
    ]
    # The endpoint picker may reach the pods (it scrapes /metrics).
    sources = [
        s.get("podSelector", {}).get("matchLabels", {})
        for r in find(docs, "NetworkPolicy", "loraplex")["spec"]["ingress"]
        for s in r["from"]
    ]
    epp_labels = epp["spec"]["template"]["metadata"]["labels"]
    assert any(s and s.items() <= epp_labels.items() for s in sources)
    route = find(docs, "HTTPRoute", "loraplex")["spec"]
    (rule,) = route["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    assert rule["backendRefs"] == [
        {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "loraplex"}
    ]


@pytest.mark.parametrize("name", GATEWAY_RENDERS)
def test_endpoint_picker_scores_queue_kv_cache_and_lora_affinity_from_vllm_metrics(
    rendered: dict[str, list[dict]], name: str
) -> None:
    from loraplex import metrics

    docs = rendered[name]
    config = yaml.safe_load(find(docs, "ConfigMap", "loraplex-epp")["data"]["plugins.yaml"])
    assert (config["apiVersion"], config["kind"]) == (
        "inference.networking.x-k8s.io/v1alpha1",
        "EndpointPickerConfig",
    )
    defined = {p.get("name", p["type"]) for p in config["plugins"]}
    (profile,) = config["schedulingProfiles"]
    used = {p["pluginRef"] for p in profile["plugins"]}
    assert used <= defined
    assert {"queue-scorer", "kv-cache-utilization-scorer", "lora-affinity-scorer"} <= used
    (msp,) = [p for p in config["plugins"] if p["type"] == "model-server-protocol-metrics"]
    params = msp["parameters"]
    labels = server(docs)[0]["spec"]["template"]["metadata"]["labels"]
    assert labels[params["engineLabelKey"]] == params["defaultEngine"] == "vllm"
    (vllm,) = [e for e in params["engineConfigs"] if e["name"] == "vllm"]
    exported = {m.name for m in metrics.REGISTRY.collect()}
    wanted = {v for k, v in vllm.items() if k.endswith("Spec")}
    missing = wanted - exported
    assert not missing, f"metrics the picker reads that are not exported: {missing}"


def test_hpa_metric_is_the_one_the_prometheus_adapter_rule_exposes(
    rendered: dict[str, list[dict]],
) -> None:
    rules = yaml.safe_load(
        (ROOT / "deploy" / "prometheus" / "prometheus-adapter-rules.yaml").read_text()
    )
    (rule,) = rules["rules"]["custom"]
    hpa = find(rendered["base"], "HorizontalPodAutoscaler", "loraplex")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"] == "vllm_num_requests_waiting"
    assert rule["seriesQuery"].startswith("vllm:num_requests_waiting{")
    assert re.fullmatch(rule["name"]["matches"], "vllm:num_requests_waiting")


@pytest.mark.parametrize("name", RENDERS)
def test_grace_period_covers_prestop_and_the_drain(
    rendered: dict[str, list[dict]], name: str
) -> None:
    deployment, container = server(rendered[name])
    pod = deployment["spec"]["template"]["spec"]
    sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(option(resolved_args(rendered[name]), "--shutdown-timeout"))
    assert pod["terminationGracePeriodSeconds"] >= sleep + drain + 5
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


@pytest.mark.parametrize("name", RENDERS)
def test_hardening_and_secrets(rendered: dict[str, list[dict]], name: str) -> None:
    docs = rendered[name]
    deployment, container = server(docs)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = environment(docs, container)
    for writable in ("/tmp", env["LORAPLEX_CACHE"]):  # uploads; kernels and S3 downloads
        assert "emptyDir" in volumes[mounts[writable]], writable
    keys = Path(option(resolved_args(docs), "--api-keys-file"))
    assert volumes[mounts[str(keys.parent)]]["secret"]["secretName"] == "loraplex-api-keys"
    store = option(resolved_args(docs), "--adapter-store")
    if store.startswith("s3://"):
        assert {"secretRef": {"name": "loraplex-s3"}} in container["envFrom"]
        assert not has(docs, "PersistentVolumeClaim", "loraplex-adapters")
    else:  # the shared volume: every replica sees one store
        claim = volumes[mounts[store]]["persistentVolumeClaim"]["claimName"]
        assert find(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
            "ReadWriteMany"
        ]
    assert float(option(resolved_args(docs), "--store-poll-s")) > 0


def test_gpu_overlay_requests_a_gpu_and_runs_on_cuda(rendered: dict[str, list[dict]]) -> None:
    for name in RENDERS:
        docs = rendered[name]
        _, container = server(docs)
        gpu = name == "overlays/gpu"
        assert (option(resolved_args(docs), "--device") == "cuda") is gpu, name
        limits = container["resources"]["limits"]
        assert (limits.get("nvidia.com/gpu") == 1) is gpu, name
        image = container["image"]
        assert image.endswith("-cuda") is gpu, image
    args = resolved_args(rendered["overlays/gpu"])
    assert int(option(args, "--max-num-seqs")) > int(
        option(resolved_args(rendered["base"]), "--max-num-seqs")
    )
    assert float(option(args, "--gpu-memory-utilization")) <= 0.95


@pytest.mark.parametrize("name", RENDERS)
def test_prometheus_scrapes_with_a_metrics_key_and_the_picker_without(
    rendered: dict[str, list[dict]], name: str
) -> None:
    """Prometheus presents the Secret loraplex-metrics-key (a key of role ``metrics``: every
    name plain); the gateway's picker cannot send a key, so no server it scrapes may require
    one (--metrics-require-key), and it reads the anonymous view (tenants' adapters opaque)."""
    from loraplex.api.auth import PERMISSIONS, SCRAPE

    docs = rendered[name]
    (endpoint,) = find(docs, "ServiceMonitor", "loraplex")["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "loraplex-metrics-key", "key": "token"},
    }
    assert PERMISSIONS["metrics"] == {SCRAPE}  # what such a key may do: scrape, nothing else
    if has(docs, "Deployment", "loraplex-epp"):
        assert "--metrics-require-key" not in resolved_args(docs)


def test_the_plain_prometheus_job_presents_the_metrics_key() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "loraplex"]
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].endswith("/loraplex-metrics-key/token")


@pytest.mark.parametrize("name", RENDERS)
def test_every_tenant_has_a_storage_quota(rendered: dict[str, list[dict]], name: str) -> None:
    args = resolved_args(rendered[name])
    assert 0 < int(option(args, "--max-adapters-per-tenant")) <= 1000
    assert 0 < int(option(args, "--max-adapter-mb-per-tenant")) <= 64 * 1024
