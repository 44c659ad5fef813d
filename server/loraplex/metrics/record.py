"""The recorders every part of the server updates its metrics through, and the exposition."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loraplex.metrics.definitions import (
    ADAPTER_EVICTIONS,
    ADAPTER_HITS,
    ADAPTER_LABELS,
    ADAPTER_LOAD_SECONDS,
    ADAPTER_LOADS,
    ADAPTER_MISSES,
    ADAPTER_REQUESTS,
    BATCH_SIZE,
    BATCH_TOKENS,
    E2E_LATENCY,
    GENERATION_TOKENS,
    GRAMMAR_CACHE,
    GRAMMAR_COMPILE_SECONDS,
    INTER_TOKEN_LATENCY,
    PREEMPTIONS,
    PREFIX_CACHE_HITS,
    PROMPT_TOKENS,
    QUEUE_TIME,
    RATE_LIMITED,
    REGISTRY,
    REQUESTS,
    TIME_TO_FIRST_TOKEN,
    Collecting,
)
from loraplex.metrics.labels import BASE_LABEL

__all__ = [
    "record_adapter_evictions",
    "record_adapter_load",
    "record_adapter_lookups",
    "record_finished",
    "record_first_token",
    "record_generated_tokens",
    "record_grammar_cache",
    "record_grammar_compile",
    "record_queue_time",
    "record_rate_limited",
    "record_step",
    "record_token_gap",
    "render",
]


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


def record_grammar_compile(kind: str, seconds: float) -> None:
    GRAMMAR_COMPILE_SECONDS.labels(kind=kind).observe(seconds)


def record_grammar_cache(hit: bool) -> None:
    GRAMMAR_CACHE.labels(result="hit" if hit else "miss").inc()


# ---- exposition ------------------------------------------------------------------------


def render(source: Collecting | None = None) -> tuple[bytes, str]:
    """The Prometheus text exposition of :data:`REGISTRY` (or of ``source``, a view of it such
    as ``scrape.py``'s anonymous one) and its content type."""
    return generate_latest(source or REGISTRY), CONTENT_TYPE_LATEST  # type: ignore[arg-type]
