"""Wire one engine from the frozen config: model, KV cache, adapter store, registry, slots.

The whole server is assembled here and nowhere else, in the order each part needs the one
before: the model (its projections decide which adapters fit), the adapter limits and store,
the registry over them, the device slots, the scheduler, and finally the adapters present at
start (the store's, ``--lora-modules``, pinned ones and ``--merged-adapters``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from loraplex import metrics
from loraplex.adapters.errors import AdapterError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.rules import Limits
from loraplex.adapters.store import open_store
from loraplex.config import Config, LoRAConfig
from loraplex.engine.adapters import EngineAdapters
from loraplex.engine.block_manager import BlockManager
from loraplex.engine.capacity import CapacityError
from loraplex.engine.default_model import DEFAULT_MODEL_NAME, ensure_default_model
from loraplex.engine.dummy_weights import builtin_dummy_folder
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.model_runner import ModelRunner
from loraplex.engine.scheduler import Scheduler
from loraplex.lora.slot_cache import SlotCache
from loraplex.paths import cache_root

log = logging.getLogger(__name__)


def adapter_limits(config: LoRAConfig) -> Limits:
    """What one adapter may cost, from the options (uploads are capped by the same values)."""
    return Limits(
        max_rank=config.max_lora_rank,
        allow_base_mismatch=config.allow_base_mismatch,
        max_body_bytes=config.max_upload_mb * 2**20,
        max_file_bytes=config.max_upload_mb * 2**20,
    )


def build_adapters(
    config: LoRAConfig, runner: ModelRunner, base_model: str, on_loaded: Callable[[], None]
) -> EngineAdapters:
    """The registry over the store (checked against the model's projections) and the slots."""
    limits = adapter_limits(config)
    shapes = runner.lora.module_shapes()
    checker = functools.partial(
        check_folder, limits=limits, served_model=base_model, module_shapes=shapes
    )
    location = config.store_location or str(cache_root() / "adapter-store")
    registry = AdapterRegistry(
        open_store(location, cache_root()),
        runner.dtype,
        checker,
        config.max_cpu_loras,
        on_loaded,
        pin_memory=runner.device.type == "cuda",
    )
    return EngineAdapters(config, runner, registry, SlotCache(config.max_loras), limits)


def register_startup_adapters(config: LoRAConfig, adapters: EngineAdapters) -> None:
    """The store's adapters, then ``--lora-modules``; pinned ones get their slot, and
    ``--merged-adapters`` are merged into the weights (dedicated tenants)."""
    adapters.registry.scan()
    for name, folder in config.lora_modules:
        try:
            adapters.registry.register(name, Path(folder), replace=True)
        except (AdapterError, OSError) as exc:  # listed as refused; the server still starts
            adapters.registry.refuse(name, f"{exc}; fix --lora-modules {name}={folder}")
    for card in adapters.registry.cards():
        if card.pinned:
            try:
                adapters.pin(card)
            except CapacityError as exc:  # pinned under a larger --max-pinned-loras
                log.warning("adapter %s stays unpinned: %s", card.name, exc)
    for name in config.merged_adapters:
        adapters.merge_now(name)


def build_engine(config: Config, on_adapter_loaded: Callable[[], None] = lambda: None) -> LLMEngine:
    """Load the model and everything around it; ``on_adapter_loaded`` runs (on a loader
    thread) whenever an adapter reaches host memory, so a waiting engine loop wakes."""
    dummy = config.model.load_format == "dummy"  # random weights: a real shape, no files
    default = builtin_dummy_folder if dummy else ensure_default_model
    path = config.model.model or str(default())
    model_name = config.model.served_model_name or (
        DEFAULT_MODEL_NAME if config.model.model is None and not dummy else Path(path).name
    )
    runner = ModelRunner(
        path,
        config.model,
        config.cache,
        config.lora,
        step_tokens=config.scheduler.max_num_batched_tokens,
    )
    metrics.MODEL_WEIGHT_BYTES.clear()  # the base's weight bytes by format (nf4, float32 ...)
    for fmt, nbytes in runner.weight_bytes.items():
        metrics.MODEL_WEIGHT_BYTES.labels(format=fmt).set(nbytes)
    layout = runner.layout
    max_model_len = min(
        config.model.max_model_len,
        runner.max_position_embeddings or config.model.max_model_len,
        layout.num_blocks * layout.block_size,
    )
    block_manager = BlockManager(
        layout.num_blocks, layout.block_size, config.cache.enable_prefix_caching
    )
    loaded = threading.Event()  # set by a loader thread; the engine waits on it when stalled

    def adapter_loaded() -> None:
        loaded.set()
        on_adapter_loaded()

    adapters = build_adapters(config.lora, runner, Path(path).name, adapter_loaded)
    scheduler = Scheduler(
        config.scheduler,
        block_manager,
        config.lora.max_loras,
        max_model_len,
        is_ready=adapters.is_ready,
        pinned=lambda: adapters.slots.pinned,
        is_resident=lambda key: adapters.slots.lookup(key) is not None,
    )
    engine = LLMEngine(config, model_name, runner, scheduler, adapters, max_model_len, loaded)
    register_startup_adapters(config.lora, adapters)
    return engine
