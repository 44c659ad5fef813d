"""Every Prometheus metric loraplex exports, defined once, in one dedicated registry.

A dedicated ``CollectorRegistry`` (not prometheus_client's global one) means that tests which
build several apps in one process never hit "Duplicated timeseries", and that ``/metrics`` shows
only what we define here plus the process collectors.

Who updates what:

* the API layer: request counts by finish reason, prompt/generation token counts, time to first
  token and end-to-end latency (:func:`record_first_token`, :func:`record_generated_tokens`,
  :func:`record_finished`);
* the engine loop: step duration (``STEP_DURATION.observe``), adapter loads
  (``ADAPTER_LOADS.inc``), resident adapters (``ADAPTERS_RESIDENT.set``) and merged copies
  (``MERGED_ADAPTERS``, ``MERGED_ADAPTER_BYTES``, set by ``engine/merged.py``);
* ``/metrics`` refreshes the scheduler gauges from ``engine.stats()`` on every scrape
  (:func:`update_engine_gauges`), so the engine thread never has to touch them.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Latency buckets span a laptop CPU (seconds per token) and a GPU (milliseconds per step).
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

REQUESTS = Counter(
    "loraplex_requests",
    "Finished sequences (one per completion choice), by finish reason (stop, length, abort).",
    ["finish_reason"],
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter("loraplex_prompt_tokens", "Prompt tokens prefilled.", registry=REGISTRY)
PREFIX_CACHE_HITS = Counter(
    "loraplex_prefix_cache_hit_tokens",
    "Prompt tokens whose KV came from the prefix cache (hit rate: this over prompt tokens).",
    registry=REGISTRY,
)
GENERATION_TOKENS = Counter(
    "loraplex_generation_tokens", "Output tokens generated.", registry=REGISTRY
)
NUM_RUNNING = Gauge(
    "loraplex_num_requests_running", "Sequences in the running batch.", registry=REGISTRY
)
NUM_WAITING = Gauge(
    "loraplex_num_requests_waiting", "Sequences queued, not yet scheduled.", registry=REGISTRY
)
KV_CACHE_USAGE = Gauge(
    "loraplex_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0..1).", registry=REGISTRY
)
STEP_DURATION = Histogram(
    "loraplex_step_duration_seconds",
    "Wall time of one engine step (schedule, forward, sample).",
    buckets=_STEP_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "loraplex_time_to_first_token_seconds",
    "Time from request arrival to its first output token.",
    buckets=_TTFT_BUCKETS,
    registry=REGISTRY,
)
E2E_LATENCY = Histogram(
    "loraplex_e2e_request_latency_seconds",
    "Time from request arrival to its last output token.",
    buckets=_E2E_BUCKETS,
    registry=REGISTRY,
)
ADAPTER_LOADS = Counter(
    "loraplex_adapter_loads", "Adapters loaded into a GPU/CPU slot.", registry=REGISTRY
)
ADAPTERS_RESIDENT = Gauge(
    "loraplex_adapters_resident", "Adapters resident in slots now.", registry=REGISTRY
)
MERGED_ADAPTERS = Gauge(
    "loraplex_merged_adapters",
    "Pre-merged adapter copies in memory (unmerged ones included until their requests end).",
    registry=REGISTRY,
)
MERGED_ADAPTER_BYTES = Gauge(
    "loraplex_merged_adapter_bytes",
    "Bytes held by pre-merged copies of base weights (capped by --max-merged-adapters).",
    registry=REGISTRY,
)


def record_first_token(seconds: float, prompt_tokens: int, cached_tokens: int = 0) -> None:
    """Called once per sequence when its first output arrives (prefill is done by then)."""
    TIME_TO_FIRST_TOKEN.observe(seconds)
    PROMPT_TOKENS.inc(prompt_tokens)
    PREFIX_CACHE_HITS.inc(cached_tokens)


def record_generated_tokens(n: int) -> None:
    """Called per delta, so that aborted sequences still count what they generated."""
    if n > 0:
        GENERATION_TOKENS.inc(n)


def record_finished(finish_reason: str, seconds: float) -> None:
    """Called once per sequence when it finishes (or is aborted: ``finish_reason="abort"``)."""
    REQUESTS.labels(finish_reason=finish_reason).inc()
    E2E_LATENCY.observe(seconds)


def update_engine_gauges(stats: Mapping[str, float]) -> None:
    """Copy ``engine.stats()`` (num_running, num_waiting, kv_usage[, adapters_resident])."""
    NUM_RUNNING.set(stats.get("num_running", 0))
    NUM_WAITING.set(stats.get("num_waiting", 0))
    KV_CACHE_USAGE.set(stats.get("kv_usage", 0.0))
    if "adapters_resident" in stats:
        ADAPTERS_RESIDENT.set(stats["adapters_resident"])


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of :data:`REGISTRY` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
