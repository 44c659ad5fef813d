"""``/metrics``: copy ``engine.stats()`` into the gauges of :mod:`loraplex.metrics`, then render.

The engine thread never touches these gauges: a scrape reads the engine's counts (each one
length or one copy of a small dict, see ``LLMEngine.stats``) and sets them here. The info
gauges (``vllm:cache_config_info``, ``vllm:lora_requests_info``) and the residency gauge carry
their state in labels, so each scrape clears them and sets the one current label set: a
gateway sees the latest state only, never a stale list (vLLM keeps every old label set and
the picker must find the newest by its value). A scrape without a key renders the
:class:`Relabelled` view: tenants and their adapters as opaque labels (``metrics/labels.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric

from loraplex.metrics.definitions import (
    ADAPTER_RESIDENT,
    ADAPTERS_RESIDENT,
    GATEWAY_CACHE_CONFIG,
    GATEWAY_KV_USAGE,
    GATEWAY_LORA_INFO,
    GATEWAY_RUNNING,
    GATEWAY_WAITING,
    KV_CACHE_USAGE,
    NUM_CLIENT_REQUESTS,
    NUM_RUNNING,
    NUM_WAITING,
    REGISTRY,
)
from loraplex.metrics.labels import PrivateLabels
from loraplex.metrics.record import render

_SCRAPE_LOCK = threading.Lock()  # info gauges are cleared and set again: one scrape at a time


def update_engine_gauges(stats: Mapping[str, Any]) -> None:
    """Copy ``engine.stats()`` into the gauges (see ``LLMEngine.stats`` for the keys); keys a
    stats mapping lacks leave their gauges alone."""
    NUM_RUNNING.set(stats.get("num_running", 0))
    NUM_WAITING.set(stats.get("num_waiting", 0))
    KV_CACHE_USAGE.set(stats.get("kv_usage", 0.0))
    GATEWAY_RUNNING.set(stats.get("num_running", 0))
    GATEWAY_WAITING.set(stats.get("num_waiting", 0))
    GATEWAY_KV_USAGE.set(stats.get("kv_usage", 0.0))
    if "num_client_requests" in stats:
        NUM_CLIENT_REQUESTS.set(stats["num_client_requests"])
    if "adapters_resident" in stats:
        ADAPTERS_RESIDENT.set(stats["adapters_resident"])
    if "block_size" in stats:
        GATEWAY_CACHE_CONFIG.clear()  # one engine per process: one label set
        GATEWAY_CACHE_CONFIG.labels(
            block_size=str(stats["block_size"]), num_gpu_blocks=str(stats["num_blocks"])
        ).set(1)
    if "max_loras" in stats:
        GATEWAY_LORA_INFO.clear()  # the latest state only (vLLM keeps stale label sets)
        GATEWAY_LORA_INFO.labels(
            max_lora=str(stats["max_loras"]),
            running_lora_adapters=",".join(stats.get("running_adapters", ())),
            waiting_lora_adapters=",".join(stats.get("waiting_adapters", ())),
        ).set(time.time())
    if "tiers" in stats:
        _set_residency(stats["tiers"])


def _set_residency(tiers: Mapping[str, Iterable[str]]) -> None:
    ADAPTER_RESIDENT.clear()
    for tier, names in tiers.items():
        for name in names:
            ADAPTER_RESIDENT.labels(adapter=name, tier=tier).set(1)


class Relabelled:
    """:data:`REGISTRY` with every sample's labels passed through ``private``: the anonymous
    view (``collect`` is all ``generate_latest`` calls)."""

    def __init__(self, private: PrivateLabels) -> None:
        self._private = private

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            copy = Metric(family.name, family.documentation, family.type)
            copy.samples = [
                sample._replace(labels=self._private.relabel(sample.labels))
                for sample in family.samples
            ]
            yield copy


def scrape(stats: Mapping[str, Any], private: PrivateLabels | None = None) -> tuple[bytes, str]:
    """``update_engine_gauges(stats)`` then ``render(private)``, atomically: a concurrent scrape
    never sees an info gauge between its clear and its set. ``private``: the anonymous view
    (tenants and their adapters as opaque labels); None: every name plain."""
    with _SCRAPE_LOCK:
        update_engine_gauges(stats)
        return render(None if private is None else Relabelled(private))
