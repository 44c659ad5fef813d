"""Wire one engine from the frozen config: model, KV cache, adapter store, registry, slots.

The whole server is assembled here and nowhere else, in the order each part needs the one
before: the model (its projections decide which adapters fit), the adapter limits and store,
the registry over them, the device slots, the scheduler, and finally the adapters present at
start (the store's, ``--lora-modules``, pinned ones and ``--merged-adapters``).
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from transformers import AutoConfig

from loraplex import metrics
from loraplex.adapters.errors import AdapterError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.quota import TenantQuota
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.rules import Limits
from loraplex.adapters.store import open_store
from loraplex.config import Config, LoRAConfig
from loraplex.engine.adapter_tiers.tiers import AdapterTiers
from loraplex.engine.errors import CapacityError
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.model.check import check_config, check_model
from loraplex.engine.model.default import DEFAULT_MODEL_NAME, ensure_default_model
from loraplex.engine.model.dummy import builtin_dummy_folder
from loraplex.engine.model.layers import uniform_window
from loraplex.engine.runner.decode_runner import decode_runner_for
from loraplex.engine.runner.model_runner import ModelRunner
from loraplex.engine.sched.block_manager import BlockManager
from loraplex.engine.sched.scheduler import Scheduler
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
) -> AdapterTiers:
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
        quota=TenantQuota(config.max_adapters_per_tenant, config.max_adapter_bytes_per_tenant),
    )
    return AdapterTiers(config, runner, registry, SlotCache(config.max_loras), limits)


def register_startup_adapters(config: LoRAConfig, tiers: AdapterTiers) -> None:
    """The store's adapters, then ``--lora-modules``; pinned ones get their slot, and
    ``--merged-adapters`` are merged into the weights (pre-merged copies)."""
    tiers.registry.scan()
    for name, folder in config.lora_modules:
        try:
            tiers.registry.register(name, Path(folder), replace=True)
        except (AdapterError, OSError) as exc:  # listed as refused; the server still starts
            tiers.registry.refuse(name, f"{exc}; fix --lora-modules {name}={folder}")
    for card in tiers.registry.cards():
        if card.pinned:
            try:
                tiers.pin(card)
            except CapacityError as exc:  # pinned under a larger --max-pinned-loras
                log.warning("adapter %s stays unpinned: %s", card.name, exc)
    for name in config.merged_adapters:
        tiers.merge_now(name)


def build_engine(config: Config, on_adapter_loaded: Callable[[], None] = lambda: None) -> LLMEngine:
    """Load the model and everything around it; ``on_adapter_loaded`` runs (on a loader
    thread) whenever an adapter reaches host memory, so a waiting engine loop wakes."""
    dummy = config.model.load_format == "dummy"  # random weights: a real shape, no files
    default = builtin_dummy_folder if dummy else ensure_default_model
    path = config.model.model or str(default())
    model_name = config.model.served_model_name or (
        DEFAULT_MODEL_NAME if config.model.model is None and not dummy else Path(path).name
    )
    # What the config alone rules out stops the start before any weight is read.
    check_config(AutoConfig.from_pretrained(path), model_name)
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
    check_model(runner, model_name)  # refuse now what would fail every request later
    layout = runner.layout
    max_model_len = min(
        config.model.max_model_len,
        runner.max_position_embeddings or config.model.max_model_len,
        layout.num_blocks * layout.block_size,
    )
    # All layers sliding through one window: blocks that leave it go back to the pool.
    window = uniform_window(runner.model.config)
    block_manager = BlockManager(
        layout.num_blocks, layout.block_size, config.cache.enable_prefix_caching, window
    )
    if window is not None:
        log.info("sliding window of %d tokens on every layer: older KV blocks are freed", window)
    loaded = threading.Event()  # set by a loader thread; the engine waits on it when stalled

    def adapter_loaded() -> None:
        loaded.set()
        on_adapter_loaded()

    tiers = build_adapters(config.lora, runner, Path(path).name, adapter_loaded)
    scheduler = Scheduler(
        config.scheduler,
        block_manager,
        config.lora.max_loras,
        max_model_len,
        is_ready=tiers.device.is_ready,
        pinned=lambda: tiers.slots.pinned,
        is_resident=lambda key: tiers.slots.lookup(key) is not None,
    )
    # Pure-decode steps: persistent buffers, CUDA graphs where they can be captured.
    sched = config.scheduler
    runner.decode = decode_runner_for(
        runner, sched.max_num_seqs, max_model_len, config.model.enforce_eager
    )
    engine = LLMEngine(config, model_name, runner, scheduler, tiers, max_model_len, loaded)
    register_startup_adapters(config.lora, tiers)
    return engine


def freeze_startup_objects() -> None:
    """Move everything start-up allocated (the model's modules, the tokenizer, the adapters:
    ~400k tracked objects for the default model) out of the garbage collector's reach, as vLLM
    does. A full collection walks every tracked object with the GIL held: measured here at
    0.3-1.3 s, a stall of every stream and of the engine thread whenever one comes round."""
    gc.collect()
    gc.freeze()
