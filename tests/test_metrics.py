"""The metrics module: one registry, every metric named loraplex_*, helpers update them.

Metrics live in a process-wide registry, so tests compare before/after values, never absolutes
(other tests in the session may have counted requests already)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from loraplex import metrics

EXPECTED = {
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
    dashboard = Path(__file__).parents[1] / "deploy" / "grafana" / "loraplex-dashboard.json"
    exprs = [t["expr"] for p in json.loads(dashboard.read_text())["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"loraplex_[a-z0-9_]+", e)}
    families = _families()
    for name in names:
        assert re.sub(r"_(total|bucket|count|sum)$", "", name) in families, name
    assert "loraplex_prefix_cache_hit_tokens_total" in names


def test_own_metrics_are_prefixed() -> None:
    own = [n for n in _families() if not n.startswith(("process_", "python_"))]
    assert own and all(n.startswith("loraplex_") for n in own)


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
    metrics.update_engine_gauges(
        {"num_running": 3, "num_waiting": 5, "kv_usage": 0.25, "adapters_resident": 2}
    )
    assert _value("loraplex_num_requests_running") == 3
    assert _value("loraplex_num_requests_waiting") == 5
    assert _value("loraplex_kv_cache_usage_ratio") == pytest.approx(0.25)
    assert _value("loraplex_adapters_resident") == 2
    # adapters_resident is the engine's to set; stats without it leave it alone.
    metrics.update_engine_gauges({"num_running": 0, "num_waiting": 0, "kv_usage": 0.0})
    assert _value("loraplex_adapters_resident") == 2


def test_engine_side_metrics() -> None:
    steps = _value("loraplex_step_duration_seconds_count")
    loads = _value("loraplex_adapter_loads_total")
    metrics.STEP_DURATION.observe(0.003)
    metrics.ADAPTER_LOADS.inc()
    assert _value("loraplex_step_duration_seconds_count") == steps + 1
    assert _value("loraplex_adapter_loads_total") == loads + 1
