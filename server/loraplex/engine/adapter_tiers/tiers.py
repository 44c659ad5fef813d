"""The engine's view of adapters: resolve them, hold them for the requests that run on them,
keep a step's adapters resident, serve pre-merged copies.

Tier moves: store -> host memory happens on the registry's loader threads; host -> device slot
happens in :meth:`AdapterTiers.activate`, between steps, on the engine thread (on a GPU as
copies from pinned memory on a side stream, which only the steps reading the slot wait for).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
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
from loraplex.engine.errors import ParameterError
from loraplex.engine.request.sequence import Sequence
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
        # Whether sequences were running at the last poll: only then is a request held back
        # while its slot's copy is in flight (with none running, a wait stalls nobody).
        self._running = False

    # ---- requests (API thread) ---------------------------------------------------------

    def resolve(self, spec: AdapterSpec) -> tuple[str | None, bool]:
        """(adapter key, pre-merged?) for a request; a mix is built now, off the engine thread.
        A card is used as is (the API looked it up once); a name is looked up here."""
        if spec is None:
            return None, False
        if not isinstance(spec, list):
            key = self._card(spec).key
            return key, self.merges.serves(key)
        parts = [(self._card(ref), weight) for ref, weight in spec]
        key = mix_key([(card.key, weight) for card, weight in parts])
        if self.registry.loaded(key) is None:
            mix = combine([(self.load(card), weight) for card, weight in parts])
            # Checked on the real tensors (per-module ranks add up, whatever each config's r
            # says), so a mix that cannot fit a slot never reaches a step.
            if mix.max_rank > self.config.max_lora_rank:
                limit = self.config.max_lora_rank
                message = f"the combination has rank {mix.max_rank} > --max-lora-rank {limit}"
                raise ParameterError("adapters", message)
            self.registry.add_ephemeral(mix)
        return key, False

    def _card(self, ref: AdapterRef) -> AdapterCard:
        return ref if isinstance(ref, AdapterCard) else self.registry.get(ref)

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
        """As ``parent`` is queued, each child holds its adapter in host memory, and a
        pre-merged one its merged copy, until :meth:`release`. A copy unmerged and dropped
        since the request was prepared is gone: the children run dynamically (the same
        weights)."""
        adapter = parent.adapter
        merged = parent.merged and self.merges.hold(adapter, len(parent.children))
        parent.merged = merged
        if adapter is not None and not merged:
            hit = adapter in self.registry.host
            metrics.record_adapter_lookups("host", hits=int(hit), misses=int(not hit))
        for state in parent.children:
            state.seq.merged = state.holds_merged = merged
            if adapter is not None:
                self.registry.host.acquire(adapter)
                state.holds_adapter = True

    def release(self, state: RequestState) -> None:
        """A child finished: what it held (host memory, a merged copy) is released, once."""
        if state.holds_adapter:
            state.holds_adapter = False
            self.registry.host.release(state.seq.adapter)
        if state.holds_merged:
            state.holds_merged = False
            self.merges.release(state.seq.adapter)

    def is_ready(self, seq: Sequence) -> bool:
        """Whether ``seq`` may join the next step: its adapter is in host memory (the engine
        prefetches queued ones) and, while other sequences run, not being copied into its slot
        (their step would wait for the copy)."""
        if seq.adapter is None or seq.merged:
            return True
        if seq.adapter not in self.registry.host:
            return False
        slot = self.slots.lookup(seq.adapter)  # a copy in flight: admitted once it is done
        return slot is None or not self._running or self.runner.lora.copier.is_ready(slot)

    def poll_waiting(
        self, waiting: Iterable[Sequence], running: Iterable[Sequence] = ()
    ) -> list[tuple[Sequence, Exception]]:
        """Prefetch the adapters of queued sequences into host memory (the first
        ``max_cpu_loras`` distinct ones, so prefetching never thrashes host memory) and, where
        slot copies are asynchronous, into device slots no ``running`` sequence uses; returns
        those whose adapter could not be loaded (deleted or replaced meanwhile), with why."""
        wanted: dict[str, None] = {}  # first come, first served
        failed: list[tuple[Sequence, Exception]] = []
        for seq in waiting:
            if seq.adapter is None or seq.merged:
                continue
            error = self.registry.failure(seq.adapter)
            if error is not None:
                failed.append((seq, error))
            elif len(wanted) < self.config.max_cpu_loras:
                wanted[seq.adapter] = None
                self.registry.prefetch(seq.adapter)
        running = list(running)
        self._running = bool(running)
        if self.runner.lora.copier.asynchronous:
            self._prefetch_slots(list(wanted), running)
        return failed

    def _prefetch_slots(self, queued: list[str], running: Iterable[Sequence]) -> None:
        """Start the slot copies of queued adapters already in host memory, so they are in
        place when their requests are admitted (``is_ready`` holds a request back while its
        copy is in flight) and no step waits for them. Only slots that no running sequence's
        adapter (nor a queued one already resident) holds are taken, least recently used
        first, and only as many as are left. On the CPU copies are synchronous: a copy costs
        the engine thread the same whenever it runs, so there slots fill in ``activate``."""
        resident = self.slots.resident()
        keep = {s.adapter for s in running if s.adapter is not None and not s.merged}
        keep |= {key for key in queued if key in resident}
        taken = keep | {key for key in self.slots.pinned if key in resident}
        room = self.slots.num_slots - len(taken)
        new = [key for key in queued if key not in resident and key in self.registry.host]
        if room <= 0 or not new:
            return
        try:
            _, loads = self.slots.acquire(keep | set(new[:room]))
        except RuntimeError:  # no room after all: activate loads them when they are admitted
            return
        metrics.record_adapter_lookups("device", hits=0, misses=len(loads))
        self._load(loads, resident)  # a failed one is retried (and reported) by activate

    def activate(self, keys: set[str]) -> tuple[dict[str, int], dict[str, Exception]]:
        """Give every adapter of the step a device slot, loading the new ones from host memory;
        the step's forward (issued next) is ordered after those loads, and no other step is.

        Returns the slots, and the adapters that could not be loaded with why: only their
        requests fail; the rest of the step runs without them.
        """
        slot_of, failed = self._make_resident(keys)
        self.runner.lora.wait_for_slots(slot_of.values())  # the step reads them next
        return slot_of, failed

    def _make_resident(self, keys: set[str]) -> tuple[dict[str, int], dict[str, Exception]]:
        """Slots for ``keys``, issuing the loads of those not resident (on a GPU: copies the
        host does not wait for); the adapters whose load failed, with why."""
        before = self.slots.resident() if keys else {}
        slot_of, loads = self.slots.acquire(keys)
        metrics.record_adapter_lookups("device", hits=len(slot_of) - len(loads), misses=len(loads))
        failed = self._load(loads, before)
        for key in failed:
            slot_of.pop(key, None)
        return slot_of, failed

    def _load(self, loads: list[tuple[str, int]], before: dict[str, int]) -> dict[str, Exception]:
        """Fill the slots ``SlotCache.acquire`` handed out (``before``: who was resident, to
        count the evictions); a failed load leaves its slot empty. Returns the failures."""
        if loads:  # a load into a slot that was taken evicted its previous adapter
            evicted = [key for key in before if self.slots.lookup(key) is None]
            metrics.record_adapter_evictions("device", len(evicted))
        failed: dict[str, Exception] = {}
        for key, slot in loads:
            start = time.perf_counter()
            try:
                adapter = self.registry.loaded(key)
                if adapter is None:
                    raise AdapterNotFoundError(adapter_name(key))
                self.runner.lora.load_slot(slot, adapter)
            except Exception as exc:
                log.exception("loading adapter %s into slot %d failed", key, slot)
                self.slots.evict(key)
                self.runner.lora.load_slot(slot, None)
                failed[key] = exc
            else:  # on a GPU: the time to issue the copies, which the host does not wait for
                metrics.record_adapter_load("device", time.perf_counter() - start)
        return failed

    def pin(self, card: AdapterCard) -> None:
        """Keep ``card`` device-resident from now on (loaded into a slot right away); at most
        ``--max-pinned-loras`` names are pinned (a :class:`CapacityError` past it)."""
        self.pins.check(card.name)
        self.slots.pin(card.key)
        if self.registry.loaded(card.key) is None:
            self.registry.keep(card.key, self.load(card))
        _, failed = self._make_resident({card.key})  # the first step that reads it waits
        if failed:
            self.slots.unpin(card.key)
            raise failed[card.key]

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
