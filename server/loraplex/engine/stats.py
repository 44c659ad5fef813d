"""The engine's numbers for ``/metrics`` and the gateway, read without stopping the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraplex.adapters.card import adapter_name
from loraplex.adapters.weights import MIX_PREFIX
from loraplex.config import Config

if TYPE_CHECKING:
    from loraplex.engine.adapter_tiers.tiers import AdapterTiers
    from loraplex.engine.sched.scheduler import Scheduler


def engine_stats(
    scheduler: Scheduler, adapters: AdapterTiers, config: Config, num_client_requests: int
) -> dict[str, object]:
    """What ``/metrics`` reports, read from any thread without stopping the engine (each
    value is one length or one copy of a small dict; none walks the waiting queue).

    ``num_running``/``num_waiting``: sequences (prompt x sample); ``num_client_requests``:
    unfinished client requests; ``kv_usage`` in 0..1; ``block_size``, ``num_blocks``,
    ``max_loras``: the configuration; ``running_adapters``: adapter names with a running
    sequence, ``waiting_adapters``: with queued ones only; ``tiers``: tier -> names resident
    there (device, host, pinned, merged); ``adapters_resident``: device slots in use.
    """
    running_keys, waiting_keys = scheduler.adapter_counts.snapshot()
    running = _routable(running_keys)
    # Two versions of one name (replaced while queued) are one name to a client.
    waiting = [name for name in _routable(waiting_keys) if name not in running]
    tiers = adapters.residency()
    return {
        "num_running": scheduler.num_running,
        "num_waiting": scheduler.num_waiting,
        "num_client_requests": num_client_requests,
        "kv_usage": scheduler.block_manager.usage,
        "block_size": scheduler.block_manager.block_size,
        "num_blocks": scheduler.block_manager.num_blocks,
        "max_loras": config.lora.max_loras,
        "running_adapters": running,
        "waiting_adapters": waiting,
        "tiers": tiers,
        "adapters_resident": len(tiers["device"]),
    }


def _routable(keys: list[str]) -> list[str]:
    """The names a client puts in ``model`` for these keys (a per-request mix has none)."""
    return sorted({adapter_name(k) for k in keys if not k.startswith(MIX_PREFIX)})
