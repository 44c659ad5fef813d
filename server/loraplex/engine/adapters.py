"""The engine's view of adapters: resolve names, keep step adapters resident, merge tenants.

Tier moves: store -> host memory happens on the registry's loader threads; host -> device slot
happens in :meth:`EngineAdapters.activate`, between steps, on the engine thread.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from loraplex import metrics
from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterPathError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.rules import Limits
from loraplex.adapters.store import open_store
from loraplex.adapters.weights import LoRAAdapter, combine, mix_key
from loraplex.config import LoRAConfig
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.sampling_params import ParameterError
from loraplex.engine.sequence import Sequence
from loraplex.lora.slot_cache import SlotCache

log = logging.getLogger(__name__)
AdapterSpec = str | list[tuple[str, float]] | None


class EngineAdapters:
    """Registry (store + host tier), device slots and pre-merged tenants of one engine."""

    def __init__(
        self,
        config: LoRAConfig,
        runner: ModelRunner,
        base_model: str,
        cache_dir: Path,
        on_loaded: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.runner = runner
        self.limits = Limits(
            max_rank=config.max_lora_rank,
            allow_base_mismatch=config.allow_base_mismatch,
            max_body_bytes=config.max_upload_mb * 2**20,
            max_file_bytes=config.max_upload_mb * 2**20,
        )
        shapes = {n: (m.in_features, m.out_features) for n, m in runner.lora.layers.items()}
        checker = functools.partial(
            check_folder, limits=self.limits, served_model=base_model, module_shapes=shapes
        )
        location = config.store_location or str(cache_dir / "adapter-store")
        self.registry = AdapterRegistry(
            open_store(location, cache_dir),
            runner.dtype,
            checker,
            config.max_cpu_loras,
            on_loaded,
        )
        self.slots = SlotCache(config.max_loras)
        self.merged: set[str] = set()
        self.registry.scan()
        for name, folder in config.lora_modules:
            self.registry.register(name, Path(folder), replace=True)
        for card in self.registry.cards():
            if card.pinned:
                self.pin(card)
        for name in config.merged_adapters:
            self.merge(name)

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
            rank = sum(card.rank for card, _ in parts)
            if rank > self.config.max_lora_rank:
                limit = self.config.max_lora_rank
                message = f"the combination has rank {rank} > --max-lora-rank {limit}"
                raise ParameterError("adapters", message)
            loaded = [(self._load_now(card), weight) for card, weight in parts]
            self.registry.add_ephemeral(combine(loaded))
        return key, False

    def _load_now(self, card: AdapterCard) -> LoRAAdapter:
        adapter = self.registry.loaded(card.key)
        if adapter is None:
            adapter = self.registry.load(card)
        return adapter

    def check_path(self, path: str) -> Path:
        """A server-side folder may be read only if it lies under one of ``--adapter-roots``."""
        folder = Path(path).resolve()
        for root in self.config.adapter_roots:
            if folder.is_relative_to(Path(root).resolve()):
                return folder
        raise AdapterPathError(f"{path!r} is not under any --adapter-roots folder")

    # ---- engine thread -----------------------------------------------------------------

    def is_ready(self, seq: Sequence) -> bool:
        """Whether ``seq``'s adapter is in host memory (the engine prefetches queued ones)."""
        return seq.adapter is None or seq.merged or seq.adapter in self.registry.host

    def activate(self, keys: set[str]) -> dict[str, int]:
        """Give every adapter of the step a device slot, loading the new ones from host memory."""
        slot_of, loads = self.slots.acquire(keys)
        for key, slot in loads:
            self.runner.lora.load_slot(slot, self.registry.loaded(key))
            metrics.ADAPTER_LOADS.inc()
        return slot_of

    def check_pin_capacity(self) -> None:
        """Pinned adapters hold slots for good; one slot always stays free for the others."""
        if len(self.slots.pinned) >= self.config.max_loras - 1:
            raise ParameterError(
                "pinned", f"at most {self.config.max_loras - 1} adapters can be pinned"
            )

    def pin(self, card: AdapterCard) -> None:
        """Keep ``card`` device-resident from now on (loaded into a slot right away)."""
        self.check_pin_capacity()
        self.slots.pin(card.key)
        if self.registry.loaded(card.key) is None:
            self.registry.host.put(card.key, self._load_now(card))
        self.activate({card.key})

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
