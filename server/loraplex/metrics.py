"""Every Prometheus metric loraplex exports, defined once, in one dedicated registry.

A dedicated ``CollectorRegistry`` (not prometheus_client's global one) means that tests which
build several apps in one process never hit "Duplicated timeseries", and that ``/metrics`` shows
only what we define here plus the process collectors.

Two families live here:

* the Gateway API Inference Extension's model-server protocol, under the names its endpoint
  picker reads for vLLM (``vllm:*``), so a loraplex pod routes with no gateway configuration;
  ``vllm:num_requests_*`` count sequences (one prompt x one sample), which is what vLLM counts
  too (its engine fans ``n > 1`` and prompt lists out into one engine request each) and what
  takes batch slots and KV blocks, the load the picker balances;
* loraplex's own (``loraplex_*``).

Who updates what:

* the engine's output processor: outcomes, tokens, TTFT, inter-token, queue and end-to-end
  latency (:func:`record_first_token`, :func:`record_token_gap`, :func:`record_finished`);
* the engine loop: step duration, batch size, preemptions (:func:`record_step`); adapter tiers:
  loads, evictions, hits and misses (:func:`record_adapter_load`, ...);
* the admission control: 429s by tenant (:func:`record_rate_limited`);
* ``/metrics`` copies the engine's gauges from ``engine.stats()`` on every scrape
  (``metrics_scrape.scrape``), so the engine thread never has to touch them.
"""

from __future__ import annotations

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

from loraplex.metric_labels import BASE_LABEL, AdapterLabels

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Latency buckets span a laptop CPU (seconds per token) and a GPU (milliseconds per step).
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TIERS = ("device", "host")  # the tiers an adapter is loaded into: a device slot, host memory

# Adapter names as label values: the first N distinct ones keep their name, the rest "other".
ADAPTER_LABELS = AdapterLabels(limit=32)

# ---- the gateway's model-server protocol (vLLM's names and semantics) --------------------

GATEWAY_RUNNING = Gauge(
    "vllm:num_requests_running",
    "Sequences in the running batch (one per prompt and sample, as vLLM counts requests).",
    registry=REGISTRY,
)
GATEWAY_WAITING = Gauge(
    "vllm:num_requests_waiting",
    "Sequences queued, not yet running (preempted ones included).",
    registry=REGISTRY,
)
GATEWAY_KV_USAGE = Gauge(
    "vllm:kv_cache_usage_perc",
    "Fraction of KV-cache blocks in use, 0..1 (1 = full).",
    registry=REGISTRY,
)
GATEWAY_CACHE_CONFIG = Gauge(
    "vllm:cache_config_info",
    "KV-cache configuration (value 1): tokens per block and number of blocks.",
    ["block_size", "num_gpu_blocks"],
    registry=REGISTRY,
)
GATEWAY_LORA_INFO = Gauge(
    "vllm:lora_requests_info",
    "Value: Unix time of the last update. running_lora_adapters: adapters with a running "
    "sequence; waiting_lora_adapters: adapters with queued sequences only (comma-separated); "
    "max_lora: adapters one batch can hold.",
    ["max_lora", "running_lora_adapters", "waiting_lora_adapters"],
    registry=REGISTRY,
)

# ---- requests --------------------------------------------------------------------------

REQUESTS = Counter(
    "loraplex_requests",
    "Finished sequences (one per completion choice), by finish reason (stop, length, abort).",
    ["finish_reason"],
    registry=REGISTRY,
)
ADAPTER_REQUESTS = Counter(
    "loraplex_adapter_requests",
    "Finished sequences by adapter (base: no adapter; other: past the label limit) and outcome "
    "(stop, length, abort: the client left or shutdown; error: the server failed it).",
    ["adapter", "outcome"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "loraplex_rate_limited_requests",
    "Requests refused with 429 (queue or the tenant's share of it full), by tenant.",
    ["tenant"],
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
NUM_CLIENT_REQUESTS = Gauge(
    "loraplex_client_requests_unfinished",
    "Client requests in the engine (each is one or more sequences: prompts x n).",
    registry=REGISTRY,
)
KV_CACHE_USAGE = Gauge(
    "loraplex_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0..1).", registry=REGISTRY
)
MODEL_WEIGHT_BYTES = Gauge(
    "loraplex_model_weight_bytes",
    "Bytes of the base model's weights by storage format (nf4, fp4, int8, float32, ...), set "
    "at start: a quantized base shows its projections' format beside the float embeddings.",
    ["format"],
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "loraplex_time_to_first_token_seconds",
    "Time from request arrival to its first output token.",
    buckets=_TTFT_BUCKETS,
    registry=REGISTRY,
)
INTER_TOKEN_LATENCY = Histogram(
    "loraplex_inter_token_latency_seconds",
    "Time between two consecutive output tokens of one sequence.",
    buckets=_STEP_BUCKETS,
    registry=REGISTRY,
)
QUEUE_TIME = Histogram(
    "loraplex_queue_time_seconds",
    "Time from request arrival to its sequence's first scheduled step.",
    buckets=_TTFT_BUCKETS,
    registry=REGISTRY,
)
E2E_LATENCY = Histogram(
    "loraplex_e2e_request_latency_seconds",
    "Time from request arrival to its last output token.",
    buckets=_E2E_BUCKETS,
    registry=REGISTRY,
)

# ---- engine steps ----------------------------------------------------------------------

STEP_DURATION = Histogram(
    "loraplex_step_duration_seconds",
    "Wall time of one engine step (schedule, forward, sample).",
    buckets=_STEP_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "loraplex_batch_size",
    "Sequences in one engine step (decodes and prefill chunks).",
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
BATCH_TOKENS = Histogram(
    "loraplex_batch_tokens",
    "Tokens fed to the model in one engine step.",
    buckets=(*_BATCH_BUCKETS, 1024, 2048, 4096, 8192),
    registry=REGISTRY,
)
PREEMPTIONS = Counter(
    "loraplex_preemptions",
    "Sequences preempted (KV dropped, recomputed later) to make room in the KV cache.",
    registry=REGISTRY,
)

# ---- adapters --------------------------------------------------------------------------

ADAPTER_LOADS = Counter(
    "loraplex_adapter_loads",
    "Adapters loaded into a tier: host (read from the store) or device (copied into a slot).",
    ["tier"],
    registry=REGISTRY,
)
ADAPTER_LOAD_SECONDS = Histogram(
    "loraplex_adapter_load_seconds",
    "Time to load one adapter into a tier (host: read and check the files; device: copy).",
    ["tier"],
    buckets=_STEP_BUCKETS,
    registry=REGISTRY,
)
ADAPTER_EVICTIONS = Counter(
    "loraplex_adapter_evictions",
    "Adapters evicted from a tier to make room (least recently used first).",
    ["tier"],
    registry=REGISTRY,
)
ADAPTER_HITS = Counter(
    "loraplex_adapter_cache_hits",
    "Lookups that found the adapter in the tier (device: per step and adapter; host: per request).",
    ["tier"],
    registry=REGISTRY,
)
ADAPTER_MISSES = Counter(
    "loraplex_adapter_cache_misses",
    "Lookups that had to load the adapter into the tier (counted as the hits are).",
    ["tier"],
    registry=REGISTRY,
)
ADAPTERS_RESIDENT = Gauge(
    "loraplex_adapters_resident", "Adapters resident in device slots now.", registry=REGISTRY
)
ADAPTER_RESIDENT = Gauge(
    "loraplex_adapter_resident",
    "1 for each adapter resident in a tier now: device (a slot), host (host memory), pinned "
    "(kept in a slot), merged (a pre-merged copy). Bounded by the tiers' capacities.",
    ["adapter", "tier"],
    registry=REGISTRY,
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

for _tier in TIERS:  # every tier's series exist from the start (rates need a zero)
    for _family in (ADAPTER_LOADS, ADAPTER_EVICTIONS, ADAPTER_HITS, ADAPTER_MISSES):
        _family.labels(tier=_tier)
    ADAPTER_LOAD_SECONDS.labels(tier=_tier)

# ---- recorders -------------------------------------------------------------------------


def record_first_token(seconds: float, prompt_tokens: int, cached_tokens: int = 0) -> None:
    """Called once per sequence when its first output arrives (prefill is done by then)."""
    TIME_TO_FIRST_TOKEN.observe(seconds)
    PROMPT_TOKENS.inc(prompt_tokens)
    PREFIX_CACHE_HITS.inc(cached_tokens)


def record_queue_time(seconds: float) -> None:
    QUEUE_TIME.observe(seconds)


def record_token_gap(seconds: float) -> None:
    """Time since the same sequence's previous output token."""
    INTER_TOKEN_LATENCY.observe(seconds)


def record_generated_tokens(n: int) -> None:
    """Called per delta, so that aborted sequences still count what they generated."""
    if n > 0:
        GENERATION_TOKENS.inc(n)


def record_finished(
    finish_reason: str,
    seconds: float | None,
    adapter: str | None = None,
    failed: bool = False,
) -> None:
    """Called once per sequence when it ends (``finish_reason="abort"`` when aborted, with
    ``failed`` when the server failed it). ``seconds`` is None for one that never produced a
    token (no end-to-end latency to report). ``adapter``: its name, None for the base model."""
    REQUESTS.labels(finish_reason=finish_reason).inc()
    label = BASE_LABEL if adapter is None else ADAPTER_LABELS.label(adapter)
    ADAPTER_REQUESTS.labels(adapter=label, outcome="error" if failed else finish_reason).inc()
    if seconds is not None:
        E2E_LATENCY.observe(seconds)


def record_rate_limited(tenant: str | None) -> None:
    """One 429; ``tenant`` None (no keys configured) counts as ``anonymous``. Tenants come from
    the keys file, so the label's values are bounded by it."""
    RATE_LIMITED.labels(tenant=tenant or "anonymous").inc()


def record_step(num_seqs: int, num_tokens: int, num_preempted: int) -> None:
    """One engine step that ran the model."""
    BATCH_SIZE.observe(num_seqs)
    BATCH_TOKENS.observe(num_tokens)
    if num_preempted:
        PREEMPTIONS.inc(num_preempted)


def record_adapter_load(tier: str, seconds: float) -> None:
    ADAPTER_LOADS.labels(tier=tier).inc()
    ADAPTER_LOAD_SECONDS.labels(tier=tier).observe(seconds)


def record_adapter_lookups(tier: str, hits: int, misses: int) -> None:
    if hits:
        ADAPTER_HITS.labels(tier=tier).inc(hits)
    if misses:
        ADAPTER_MISSES.labels(tier=tier).inc(misses)


def record_adapter_evictions(tier: str, count: int = 1) -> None:
    if count:
        ADAPTER_EVICTIONS.labels(tier=tier).inc(count)


# ---- exposition ------------------------------------------------------------------------


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of :data:`REGISTRY` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
