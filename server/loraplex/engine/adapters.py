"""The engine's view of adapters: resolve names, keep step adapters resident, merge tenants.

Tier moves: store -> host memory happens on the registry's loader threads; host -> device slot
happens in :meth:`EngineAdapters.activate`, between steps, on the engine thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from loraplex import metrics
from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterNotFoundError
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.rules import Limits
from loraplex.adapters.weights import LoRAAdapter, combine, mix_key
from loraplex.config import LoRAConfig
from loraplex.engine.adapter_roots import check_path
from loraplex.engine.capacity import PinBudget
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.sampling_params import ParameterError
from loraplex.engine.sequence import Sequence
from loraplex.lora.slot_cache import SlotCache

log = logging.getLogger(__name__)
AdapterSpec = str | list[tuple[str, float]] | None


class EngineAdapters:
    """Registry (store + host tier), device slots and pre-merged tenants of one engine.

    ``build_engine`` wires it (``engine/build.py``); the API reaches it only through the
    :class:`~loraplex.engine.adapter_service.AdapterService`.
    """

    def __init__(
        self,
        config: LoRAConfig,
        runner: ModelRunner,
        registry: AdapterRegistry,
        slots: SlotCache,
        limits: Limits,
    ) -> None:
        self.config = config
        self.runner = runner
        self.registry = registry
        self.slots = slots
        self.limits = limits
        self.merged: set[str] = set()
        self.pins = PinBudget(config.pinned_limit, lambda: slots.pinned)

    # ---- requests (API thread) ---------------------------------------------------------

    def resolve(self, spec: AdapterSpec) -> tuple[str | None, bool]:
        """(adapter key, pre-merged?) for a request; a mix is built now, off the engine thread."""
        if spec is None:
            return None, False
        if isinstance(spec, str):
            key = self.registry.get(spec).key
            return key, key in self.merged
        parts = [(self.registry.get(name), weight) for name, weight in spec]
        key = mix_key([(card.key, weight) for card, weight in parts])
        if self.registry.loaded(key) is None:
            mix = combine([(self._load_now(card), weight) for card, weight in parts])
            # Checked on the real tensors (per-module ranks add up, whatever each config's r
            # says), so a mix that cannot fit a slot never reaches a step.
            if mix.max_rank > self.config.max_lora_rank:
                limit = self.config.max_lora_rank
                message = f"the combination has rank {mix.max_rank} > --max-lora-rank {limit}"
                raise ParameterError("adapters", message)
            self.registry.add_ephemeral(mix)
        return key, False

    def _load_now(self, card: AdapterCard) -> LoRAAdapter:
        adapter = self.registry.loaded(card.key)
        if adapter is None:
            adapter = self.registry.load(card)
        return adapter

    def check_path(self, path: str) -> Path:
        """A server-side folder may be read only if it lies under one of ``--adapter-roots``."""
        return check_path(path, self.config.adapter_roots)

    # ---- engine thread -----------------------------------------------------------------

    def is_ready(self, seq: Sequence) -> bool:
        """Whether ``seq``'s adapter is in host memory (the engine prefetches queued ones)."""
        return seq.adapter is None or seq.merged or seq.adapter in self.registry.host

    def poll_waiting(self, waiting: Iterable[Sequence]) -> list[tuple[Sequence, Exception]]:
        """Prefetch the adapters of queued sequences (the first ``max_cpu_loras`` distinct
        ones, so prefetching never thrashes host memory); returns those whose adapter could not
        be loaded (deleted or replaced meanwhile), with the reason."""
        wanted: set[str] = set()
        failed: list[tuple[Sequence, Exception]] = []
        for seq in waiting:
            if seq.adapter is None or seq.merged:
                continue
            error = self.registry.failure(seq.adapter)
            if error is not None:
                failed.append((seq, error))
            elif len(wanted) < self.config.max_cpu_loras:
                wanted.add(seq.adapter)
                self.registry.prefetch(seq.adapter)
        return failed

    def activate(self, keys: set[str]) -> tuple[dict[str, int], dict[str, Exception]]:
        """Give every adapter of the step a device slot, loading the new ones from host memory.

        Returns the slots, and the adapters that could not be loaded with why: only their
        requests fail; the rest of the step runs without them.
        """
        slot_of, loads = self.slots.acquire(keys)
        failed: dict[str, Exception] = {}
        for key, slot in loads:
            try:
                adapter = self.registry.loaded(key)
                if adapter is None:
                    raise AdapterNotFoundError(key.split("@")[0])
                self.runner.lora.load_slot(slot, adapter)
            except Exception as exc:
                log.exception("loading adapter %s into slot %d failed", key, slot)
                self.slots.evict(key)
                self.runner.lora.load_slot(slot, None)
                slot_of.pop(key, None)
                failed[key] = exc
            else:
                metrics.ADAPTER_LOADS.inc()
        return slot_of, failed

    def pin(self, card: AdapterCard) -> None:
        """Keep ``card`` device-resident from now on (loaded into a slot right away); at most
        ``--max-pinned-loras`` names are pinned (a :class:`CapacityError` past it)."""
        self.pins.check(card.name)
        self.slots.pin(card.key)
        if self.registry.loaded(card.key) is None:
            self.registry.host.put(card.key, self._load_now(card))
        _, failed = self.activate({card.key})
        if failed:
            self.slots.unpin(card.key)
            raise failed[card.key]

    def forget(self, key: str) -> None:
        """Drop a removed or replaced version from the device tier."""
        slot = self.slots.evict(key)
        if slot is not None:
            self.runner.lora.load_slot(slot, None)
        if key in self.merged:
            self.unmerge_key(key)

    def merge(self, name: str) -> AdapterCard:
        card = self.registry.get(name)
        if card.key not in self.merged:
            self.runner.lora.merge(self._load_now(card))
            self.merged.add(card.key)
        return card

    def unmerge(self, name: str) -> AdapterCard:
        card = self.registry.get(name)
        self.unmerge_key(card.key)
        return card

    def unmerge_key(self, key: str) -> None:
        self.runner.lora.unmerge(key)
        self.merged.discard(key)

    def location(self, card: AdapterCard) -> dict[str, object]:
        return {
            "device_slot": self.slots.lookup(card.key),
            "host_memory": card.key in self.registry.host,
            "store": True,
            "merged": card.key in self.merged,
            "pinned": self.slots.is_pinned(card.key),
        }
