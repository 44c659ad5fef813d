"""Adapters on the device: which ones hold the device slots, and their loads from host memory.

Host -> device slot happens here, on the engine thread between steps: for the step's adapters in
:meth:`DeviceResidency.activate` (on a GPU as copies from pinned memory on a side stream, which
only the steps reading the slot wait for), and ahead of time for queued ones when copies are
asynchronous (:meth:`DeviceResidency.poll_waiting`), so a request joins a step only once its
weights are in place (:meth:`DeviceResidency.is_ready`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from loraplex import metrics
from loraplex.adapters.card import adapter_name
from loraplex.adapters.errors import AdapterNotFoundError
from loraplex.adapters.registry import AdapterRegistry
from loraplex.engine.request.sequence import Sequence
from loraplex.lora.manager import LoRAModelManager
from loraplex.lora.slot_cache import SlotCache

log = logging.getLogger(__name__)


class DeviceResidency:
    """The device tier of one engine: ``slots`` (which key holds which slot) over the LoRA
    layers' slot tables (``lora``), filled from the registry's host memory; at most
    ``max_cpu_loras`` queued adapters are prefetched at once."""

    def __init__(
        self,
        registry: AdapterRegistry,
        slots: SlotCache,
        lora: LoRAModelManager,
        max_cpu_loras: int,
    ) -> None:
        self.registry = registry
        self.slots = slots
        self.lora = lora
        self.max_cpu_loras = max_cpu_loras
        # Whether sequences were running at the last poll: only then is a request held back
        # while its slot's copy is in flight (with none running, a wait stalls nobody).
        self._running = False

    def is_ready(self, seq: Sequence) -> bool:
        """Whether ``seq`` may join the next step: its adapter is in host memory (the engine
        prefetches queued ones) and, while other sequences run, not being copied into its slot
        (their step would wait for the copy)."""
        if seq.adapter is None or seq.merged:
            return True
        if seq.adapter not in self.registry.host:
            return False
        slot = self.slots.lookup(seq.adapter)  # a copy in flight: admitted once it is done
        return slot is None or not self._running or self.lora.copier.is_ready(slot)

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
            elif len(wanted) < self.max_cpu_loras:
                wanted[seq.adapter] = None
                self.registry.prefetch(seq.adapter)
        running = list(running)
        self._running = bool(running)
        if self.lora.copier.asynchronous:
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
        self.load(loads, resident)  # a failed one is retried (and reported) by activate

    def activate(self, keys: set[str]) -> tuple[dict[str, int], dict[str, Exception]]:
        """Give every adapter of the step a device slot, loading the new ones from host memory;
        the step's forward (issued next) is ordered after those loads, and no other step is.

        Returns the slots, and the adapters that could not be loaded with why: only their
        requests fail; the rest of the step runs without them.
        """
        slot_of, failed = self.make_resident(keys)
        self.lora.wait_for_slots(slot_of.values())  # the step reads them next
        return slot_of, failed

    def make_resident(self, keys: set[str]) -> tuple[dict[str, int], dict[str, Exception]]:
        """Slots for ``keys``, issuing the loads of those not resident (on a GPU: copies the
        host does not wait for); the adapters whose load failed, with why."""
        before = self.slots.resident() if keys else {}
        slot_of, loads = self.slots.acquire(keys)
        metrics.record_adapter_lookups("device", hits=len(slot_of) - len(loads), misses=len(loads))
        failed = self.load(loads, before)
        for key in failed:
            slot_of.pop(key, None)
        return slot_of, failed

    def load(self, loads: list[tuple[str, int]], before: dict[str, int]) -> dict[str, Exception]:
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
                self.lora.load_slot(slot, adapter)
            except Exception as exc:
                log.exception("loading adapter %s into slot %d failed", key, slot)
                self.slots.evict(key)
                self.lora.load_slot(slot, None)
                failed[key] = exc
            else:  # on a GPU: the time to issue the copies, which the host does not wait for
                metrics.record_adapter_load("device", time.perf_counter() - start)
        return failed
