"""Every Prometheus metric loraplex exports, defined once, in one dedicated registry
(:data:`REGISTRY`): the gateway's ``vllm:*`` family and loraplex's own ``loraplex_*``. What
updates each, and who reads them plain, is in the package's docstring (``metrics/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.process_collector import ProcessCollector

from loraplex.metrics.labels import AdapterLabels

__all__ = [
    "ADAPTERS_RESIDENT",
    "ADAPTER_EVICTIONS",
    "ADAPTER_HITS",
    "ADAPTER_LABELS",
    "ADAPTER_LOADS",
    "ADAPTER_LOAD_SECONDS",
    "ADAPTER_MISSES",
    "ADAPTER_REQUESTS",
    "ADAPTER_RESIDENT",
    "BATCH_SIZE",
    "BATCH_TOKENS",
    "GATEWAY_CACHE_CONFIG",
    "GATEWAY_KV_USAGE",
    "GATEWAY_LORA_INFO",
    "GATEWAY_RUNNING",
    "GATEWAY_WAITING",
    "GENERATION_TOKENS",
    "GRAMMAR_CACHE",
    "GRAMMAR_COMPILE_SECONDS",
    "INTER_TOKEN_LATENCY",
    "KV_CACHE_USAGE",
    "MERGED_ADAPTERS",
    "MERGED_ADAPTER_BYTES",
    "MODEL_WEIGHT_BYTES",
    "NUM_CLIENT_REQUESTS",
    "NUM_RUNNING",
    "NUM_WAITING",
    "PREEMPTIONS",
    "PREFIX_CACHE_HITS",
    "PROMPT_TOKENS",
    "QUEUE_TIME",
    "RATE_LIMITED",
    "REGISTRY",
    "REQUESTS",
    "STEP_DURATION",
    "TIERS",
    "TIME_TO_FIRST_TOKEN",
    "Collecting",
]


class Collecting(Protocol):
    """What ``generate_latest`` reads: a registry, or a view of one."""

    def collect(self) -> Iterable[Metric]: ...


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
GRAMMAR_COMPILE_SECONDS = Histogram(
    "loraplex_grammar_compile_seconds",
    "Time to compile one constraint (JSON schema, regex, choice, grammar), by kind.",
    ["kind"],
    buckets=_STEP_BUCKETS,
    registry=REGISTRY,
)
GRAMMAR_CACHE = Counter(
    "loraplex_grammar_cache_lookups",
    "Compiled-grammar cache lookups of constrained requests, by result (hit, miss).",
    ["result"],
    registry=REGISTRY,
)

for _tier in TIERS:  # every tier's series exist from the start (rates need a zero)
    for _family in (ADAPTER_LOADS, ADAPTER_EVICTIONS, ADAPTER_HITS, ADAPTER_MISSES):
        _family.labels(tier=_tier)
    ADAPTER_LOAD_SECONDS.labels(tier=_tier)
