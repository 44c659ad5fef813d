"""The engine's view of adapters: resolve them, hold them for the requests that run on them,
keep a step's adapters resident, serve pre-merged copies.

Tier moves: store -> host memory happens on the registry's loader threads; host -> device slot
in ``residency.py`` (``AdapterTiers.device``), between steps, on the engine thread.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from loraplex import metrics
from loraplex.adapters.card import AdapterCard, adapter_name
from loraplex.adapters.errors import AdapterNotFoundError
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.roots import check_path
from loraplex.adapters.rules import Limits
from loraplex.adapters.weights import LoRAAdapter, combine, mix_key
from loraplex.config import LoRAConfig
from loraplex.engine.adapter_tiers.merged import MergedCopies
from loraplex.engine.adapter_tiers.pins import PinBudget
from loraplex.engine.adapter_tiers.residency import DeviceResidency
from loraplex.engine.errors import ParameterError
from loraplex.engine.runner.model_runner import ModelRunner
from loraplex.lora.slot_cache import SlotCache

if TYPE_CHECKING:
    from loraplex.engine.output.state import ParentRequest, RequestState

log = logging.getLogger(__name__)
# An adapter as a request names it: its card (what the API resolved in the caller's namespace)
# or qualified name, a weighted mix of them ``[(adapter, weight), ...]``, or None (base model).
AdapterRef = str | AdapterCard
AdapterSpec = AdapterRef | list[tuple[AdapterRef, float]] | None


class AdapterTiers:
    """Registry (store + host tier), device slots and pre-merged copies of one engine.

    ``build_engine`` wires it (``engine/build.py``); the API reaches it only through the
    :class:`~loraplex.engine.adapter_tiers.service.AdapterService`.
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
        self.merges = MergedCopies(runner.lora, config.max_merged_adapters)
        self.pins = PinBudget(config.pinned_limit, lambda: slots.pinned)
        # The step's side (engine thread): slots for its adapters, prefetches, who may join.
        self.device = DeviceResidency(registry, slots, runner.lora, config.max_cpu_loras)

    # ---- requests (API thread) ---------------------------------------------------------

    def resolve(self, spec: AdapterSpec) -> tuple[str | None, bool]:
        """(adapter key, pre-merged?) for a request; a mix is built now, off the engine thread.
        A card is used as is (the API looked it up once), a name is looked up here; either way
        the key comes held (``AdapterRegistry.hold``): its version stays servable through any
        replace until the request lets go (``release``/``drop``, or ``registry.release`` if it
        is never prepared)."""
        if spec is None:
            return None, False
        if not isinstance(spec, list):
            key = self._hold(spec).key
            return key, self.merges.serves(key)
        parts: list[tuple[AdapterCard, float]] = []
        try:  # the parts are held while they are combined, the mix for the request
            for ref, weight in spec:
                parts.append((self._hold(ref), weight))
            key = mix_key([(card.key, weight) for card, weight in parts])
            self.registry.hold_key(key)
            try:
                if self.registry.loaded(key) is None:
                    self.registry.add_ephemeral(self._combine(parts))
            except BaseException:
                self.registry.release(key)
                raise
        finally:
            for card, _ in parts:
                self.registry.release(card.key)
        return key, False

    def _hold(self, ref: AdapterRef) -> AdapterCard:
        if isinstance(ref, AdapterCard):
            return self.registry.hold_card(ref)
        return self.registry.hold(ref)

    def _combine(self, parts: list[tuple[AdapterCard, float]]) -> LoRAAdapter:
        mix = combine([(self.load(card), weight) for card, weight in parts])
        # Checked on the real tensors (per-module ranks add up, whatever each config's r
        # says), so a mix that cannot fit a slot never reaches a step.
        if mix.max_rank > self.config.max_lora_rank:
            limit = self.config.max_lora_rank
            message = f"the combination has rank {mix.max_rank} > --max-lora-rank {limit}"
            raise ParameterError("adapters", message)
        return mix

    def load(self, card: AdapterCard) -> LoRAAdapter:
        """``card``'s weights: from host memory, else read from the store now (any thread)."""
        adapter = self.registry.loaded(card.key)
        if adapter is None:
            adapter = self.registry.load(card)
        return adapter

    def check_path(self, path: str) -> Path:
        """A server-side folder may be read only if it lies under one of ``--adapter-roots``."""
        return check_path(path, self.config.adapter_roots)

    # ---- engine thread -----------------------------------------------------------------

    def hold(self, parent: ParentRequest) -> None:
        """As ``parent`` is queued, each child holds its adapter version, and a pre-merged one
        its merged copy, until :meth:`release` (the request's own hold from ``resolve`` passes
        to them). A copy unmerged and dropped since the request was prepared is gone: the
        children run dynamically (the same weights)."""
        adapter = parent.adapter
        merged = parent.merged and self.merges.hold(adapter, len(parent.children))
        parent.merged = merged
        if adapter is not None and not merged:
            hit = adapter in self.registry.host
            metrics.record_adapter_lookups("host", hits=int(hit), misses=int(not hit))
        for state in parent.children:
            state.seq.merged = state.holds_merged = merged
            if adapter is not None:
                self.registry.hold_key(adapter)
                state.holds_adapter = True
        self.drop(parent)

    def drop(self, parent: ParentRequest) -> None:
        """Let go of the version ``resolve`` held for ``parent`` (once): after ``hold`` its
        children hold their own; a request prepared but never queued holds nothing after."""
        if parent.holds_adapter and parent.adapter is not None:
            parent.holds_adapter = False
            self._release_key(parent.adapter)

    def release(self, state: RequestState) -> None:
        """A child finished: what it held (its version, a merged copy) is released, once."""
        if state.holds_adapter and state.seq.adapter is not None:
            state.holds_adapter = False
            self._release_key(state.seq.adapter)
        if state.holds_merged:
            state.holds_merged = False
            self.merges.release(state.seq.adapter)

    def pin(self, card: AdapterCard) -> None:
        """Keep ``card`` device-resident from now on (loaded into a slot right away); at most
        ``--max-pinned-loras`` names are pinned (a :class:`CapacityError` past it)."""
        self.pins.check(card.name)
        self.slots.pin(card.key)
        if self.registry.loaded(card.key) is None:
            self.registry.keep(card.key, self.load(card))
        _, failed = self.device.make_resident({card.key})  # the first step that reads it waits
        if failed:
            self.slots.unpin(card.key)
            raise failed[card.key]

    def _release_key(self, key: str) -> None:
        """Engine thread: a request lets go of ``key``; the last release of a replaced or
        removed version frees its device slot too."""
        self.registry.release(key)
        if self.registry.is_retired(key):
            self.forget(key)

    def swap(self, old_key: str, new_key: str) -> None:
        """Engine thread, between two steps: version ``new_key`` replaced ``old_key``; a slot
        takes the new weights now, so the first request on the new version finds them there.

        The old version's slot is overwritten in place only when no request holds it (none
        is queued or running on it, and none can start: the name resolves to the new
        version). Otherwise its requests finish on it untouched, and the new version gets a
        slot of its own if one is free or holds an adapter no request needs; the old slot is
        freed by its last ``release``. Never overwriting a slot under a running request is
        what keeps every request on one version from its first token to its last.
        """
        self.merges.leave(old_key)
        self.slots.unpin(old_key)  # a pin is per version: the upload says whether to keep it
        slot = self.slots.lookup(old_key)
        in_use = self.registry.host.held(old_key)
        if slot is None or self.slots.lookup(new_key) is not None:
            if not in_use:
                self.forget(old_key)
            return
        if not in_use:
            self.slots.rekey(old_key, new_key)
            self.device.load([(new_key, slot)], self.slots.resident())
            return
        resident = self.slots.resident()
        keep = {k for k in resident if self.registry.host.held(k) or self.slots.is_pinned(k)}
        if len(keep) >= self.slots.num_slots:  # no room now: it loads when it is first used
            return
        _, loads = self.slots.acquire(keep | {new_key})
        self.device.load(loads, resident)

    def forget(self, key: str) -> None:
        """Drop a removed or replaced version from the device tier; its merged copy (if any)
        stays until the sequences running on it finish."""
        slot = self.slots.evict(key)
        if slot is not None:
            self.runner.lora.load_slot(slot, None)
        self.merges.leave(key)

    def merge_now(self, name: str) -> AdapterCard:
        """Merge on the calling thread (``--merged-adapters`` at start, before the engine runs;
        the API merges through ``AdapterService.merge``, off the engine thread)."""
        card = self.registry.get(name)
        if self.merges.begin(card.key):
            try:
                weights = self.merges.compute(self.load(card)).result()
            except BaseException:
                self.merges.cancel(card.key)
                raise
            self.install_merged(card, weights)
        return card

    def install_merged(self, card: AdapterCard, weights: dict[str, torch.Tensor]) -> None:
        """Engine thread: swap in a computed copy, unless ``card`` was deleted or replaced while
        it was computed (then a 404; the copy is dropped)."""
        current = self.registry.get(card.name) if self.registry.has(card.name) else None
        if current is None or current.key != card.key:
            self.merges.cancel(card.key)
            raise AdapterNotFoundError(card.name)
        self.merges.install(card.key, weights)

    def unmerge(self, name: str) -> AdapterCard:
        """New requests run dynamically at once; running ones finish on the merged copy, which
        is dropped after them (``W0`` was never touched: nothing to restore)."""
        card = self.registry.get(name)
        self.merges.leave(card.key)
        return card

    def residency(self) -> dict[str, list[str]]:
        """Tier -> adapter names resident there now (any thread): ``device`` (a slot),
        ``host`` (host memory), ``pinned`` (kept in a slot), ``merged`` (a pre-merged copy).
        Each list is bounded by its tier's capacity; a per-request mix is listed by its key."""
        host = self.registry.host.keys()
        return {
            "device": sorted(adapter_name(k) for k in self.slots.resident()),
            "host": sorted(adapter_name(k) for k in host),
            "pinned": sorted(adapter_name(k) for k in self.slots.pinned),
            "merged": sorted(adapter_name(k) for k in self.merges.serving()),
        }

    def location(self, card: AdapterCard) -> dict[str, object]:
        return {
            "device_slot": self.slots.lookup(card.key),
            "host_memory": card.key in self.registry.host,
            "store": True,
            "merged": self.merges.serves(card.key),
            "merged_bytes": self.merges.nbytes(card.key),
            "pinned": self.slots.is_pinned(card.key),
        }
