"""The metrics module: one registry, loraplex_* and the gateway's vllm:*, helpers update them.

Metrics live in a process-wide registry, so tests compare before/after values, never absolutes
(other tests in the session may have counted requests already)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraplex import metrics
from loraplex.metrics import scrape as metrics_scrape
from loraplex.metrics.labels import AdapterLabels

GATEWAY = {  # the Gateway API Inference Extension's model-server protocol (vLLM's names)
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:cache_config_info": "gauge",
    "vllm:lora_requests_info": "gauge",
}
EXPECTED = {
    **GATEWAY,
    "loraplex_adapter_requests": "counter",
    "loraplex_rate_limited_requests": "counter",
    "loraplex_client_requests_unfinished": "gauge",
    "loraplex_inter_token_latency_seconds": "histogram",
    "loraplex_queue_time_seconds": "histogram",
    "loraplex_batch_size": "histogram",
    "loraplex_batch_tokens": "histogram",
    "loraplex_preemptions": "counter",
    "loraplex_adapter_load_seconds": "histogram",
    "loraplex_adapter_evictions": "counter",
    "loraplex_adapter_cache_hits": "counter",
    "loraplex_adapter_cache_misses": "counter",
    "loraplex_adapter_resident": "gauge",
    "loraplex_requests": "counter",
    "loraplex_prompt_tokens": "counter",
    "loraplex_prefix_cache_hit_tokens": "counter",
    "loraplex_generation_tokens": "counter",
    "loraplex_num_requests_running": "gauge",
    "loraplex_num_requests_waiting": "gauge",
    "loraplex_kv_cache_usage_ratio": "gauge",
    "loraplex_step_duration_seconds": "histogram",
    "loraplex_time_to_first_token_seconds": "histogram",
    "loraplex_e2e_request_latency_seconds": "histogram",
    "loraplex_adapter_loads": "counter",
    "loraplex_adapters_resident": "gauge",
}


STATS = {
    "num_running": 3,
    "num_waiting": 5,
    "num_client_requests": 4,
    "kv_usage": 0.25,
    "block_size": 16,
    "num_blocks": 128,
    "max_loras": 2,
    "running_adapters": ["a", "b"],
    "waiting_adapters": ["c"],
    "tiers": {"device": ["a", "b"], "host": ["a", "b", "c"], "pinned": ["a"], "merged": []},
    "adapters_resident": 2,
}


def _families() -> dict[str, object]:
    body, _ = metrics.render()
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def test_render_returns_prometheus_text() -> None:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE loraplex_requests_total counter" in body


def test_every_metric_is_defined_with_its_type() -> None:
    families = _families()
    for name, kind in EXPECTED.items():
        assert name in families, name
        assert families[name].type == kind, name


def test_every_metric_the_dashboard_queries_exists() -> None:
    dashboard = Path(__file__).parents[2] / "deploy" / "grafana" / "loraplex-dashboard.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"(?:loraplex_|vllm:)[a-z0-9_]+", e)}
    families = _families()
    for name in names:
        assert re.sub(r"_(total|bucket|count|sum)$", "", name) in families, name
    assert "loraplex_prefix_cache_hit_tokens_total" in names


def test_own_metrics_are_prefixed() -> None:
    own = [n for n in _families() if not n.startswith(("process_", "python_"))]
    assert own and all(n.startswith(("loraplex_", "vllm:")) for n in own)
    assert {n for n in own if n.startswith("vllm:")} == set(GATEWAY)


def test_request_helpers_update_counters_and_histograms() -> None:
    reqs = _value("loraplex_requests_total", {"finish_reason": "length"})
    prompt = _value("loraplex_prompt_tokens_total")
    gen = _value("loraplex_generation_tokens_total")
    ttft = _value("loraplex_time_to_first_token_seconds_count")
    e2e = _value("loraplex_e2e_request_latency_seconds_count")

    metrics.record_first_token(0.02, prompt_tokens=7)
    metrics.record_generated_tokens(3)
    metrics.record_generated_tokens(0)
    metrics.record_finished("length", 0.5)

    assert _value("loraplex_requests_total", {"finish_reason": "length"}) == reqs + 1
    assert _value("loraplex_prompt_tokens_total") == prompt + 7
    assert _value("loraplex_generation_tokens_total") == gen + 3
    assert _value("loraplex_time_to_first_token_seconds_count") == ttft + 1
    assert _value("loraplex_e2e_request_latency_seconds_count") == e2e + 1


def test_update_engine_gauges() -> None:
    metrics_scrape.update_engine_gauges(STATS)
    assert _value("loraplex_num_requests_running") == 3
    assert _value("loraplex_num_requests_waiting") == 5
    assert _value("loraplex_client_requests_unfinished") == 4
    assert _value("loraplex_kv_cache_usage_ratio") == pytest.approx(0.25)
    assert _value("loraplex_adapters_resident") == 2
    # adapters_resident is the engine's to set; stats without it leave it alone.
    metrics_scrape.update_engine_gauges({"num_running": 0, "num_waiting": 0, "kv_usage": 0.0})
    assert _value("loraplex_adapters_resident") == 2


def test_gateway_metrics_follow_the_protocol() -> None:
    before = time.time()
    body, _ = metrics_scrape.scrape(STATS)
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    (running,) = families["vllm:num_requests_running"].samples
    (waiting,) = families["vllm:num_requests_waiting"].samples
    (kv,) = families["vllm:kv_cache_usage_perc"].samples
    assert (running.value, waiting.value, kv.value) == (3, 5, 0.25)
    (cache,) = families["vllm:cache_config_info"].samples
    assert cache.labels == {"block_size": "16", "num_gpu_blocks": "128"} and cache.value == 1
    (lora,) = families["vllm:lora_requests_info"].samples
    assert lora.labels == {
        "max_lora": "2",
        "running_lora_adapters": "a,b",
        "waiting_lora_adapters": "c",
    }
    assert before <= lora.value <= time.time()
    # A later scrape replaces the label set: the gateway never reads a stale list.
    metrics_scrape.scrape({**STATS, "running_adapters": [], "waiting_adapters": []})
    (lora,) = _families()["vllm:lora_requests_info"].samples
    assert lora.labels["running_lora_adapters"] == lora.labels["waiting_lora_adapters"] == ""


def test_residency_gauge_lists_each_tier() -> None:
    metrics_scrape.update_engine_gauges(STATS)
    resident = {
        (s.labels["adapter"], s.labels["tier"])
        for s in _families()["loraplex_adapter_resident"].samples
    }
    assert resident == {
        ("a", "device"),
        ("b", "device"),
        ("a", "host"),
        ("b", "host"),
        ("c", "host"),
        ("a", "pinned"),
    }


def test_adapter_labels_are_bounded() -> None:
    labels = AdapterLabels(limit=2)
    assert [labels.label(n) for n in ("x", "y", "z", "x", "+mix-abc")] == [
        "x",
        "y",
        "other",
        "x",
        "mix",
    ]
    with pytest.raises(ValueError, match="label limit"):
        labels.set_limit(-1)


def test_outcomes_by_adapter_and_rate_limits() -> None:
    def outcome(adapter: str, outcome: str) -> float:
        return _value("loraplex_adapter_requests_total", {"adapter": adapter, "outcome": outcome})

    base, failed = outcome("base", "stop"), outcome("base", "error")
    limited = _value("loraplex_rate_limited_requests_total", {"tenant": "acme"})
    anonymous = _value("loraplex_rate_limited_requests_total", {"tenant": "anonymous"})
    metrics.record_finished("stop", 0.1)
    metrics.record_finished("abort", None, failed=True)
    metrics.record_rate_limited("acme")
    metrics.record_rate_limited(None)
    assert (outcome("base", "stop"), outcome("base", "error")) == (base + 1, failed + 1)
    assert _value("loraplex_rate_limited_requests_total", {"tenant": "acme"}) == limited + 1
    assert _value("loraplex_rate_limited_requests_total", {"tenant": "anonymous"}) == anonymous + 1


def test_engine_side_metrics() -> None:
    steps = _value("loraplex_step_duration_seconds_count")
    device = {"tier": "device"}
    loads = _value("loraplex_adapter_loads_total", device)
    load_time = _value("loraplex_adapter_load_seconds_count", device)
    preempted = _value("loraplex_preemptions_total")
    batches = _value("loraplex_batch_size_count")
    hits = _value("loraplex_adapter_cache_hits_total", {"tier": "host"})
    evictions = _value("loraplex_adapter_evictions_total", {"tier": "host"})
    metrics.STEP_DURATION.observe(0.003)
    metrics.record_adapter_load("device", 0.001)
    metrics.record_step(num_seqs=4, num_tokens=40, num_preempted=2)
    metrics.record_adapter_lookups("host", hits=3, misses=0)
    metrics.record_adapter_evictions("host", 2)
    assert _value("loraplex_step_duration_seconds_count") == steps + 1
    assert _value("loraplex_adapter_loads_total", device) == loads + 1
    assert _value("loraplex_adapter_load_seconds_count", device) == load_time + 1
    assert _value("loraplex_preemptions_total") == preempted + 2
    assert _value("loraplex_batch_size_count") == batches + 1
    assert _value("loraplex_adapter_cache_hits_total", {"tier": "host"}) == hits + 3
    assert _value("loraplex_adapter_evictions_total", {"tier": "host"}) == evictions + 2
