"""An engine over the ``store`` fixture's tiny model and adapters (tests/engine/conftest.py),
with a small paged cache and token budget, and a loop that runs requests to the end."""

from __future__ import annotations

from pathlib import Path

from builders import save_adapter, save_tiny_model

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams


def make_engine(store: tuple[Path, Path], **cache: int | bool) -> LLMEngine:
    model_dir, adapters = store
    return build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=64),
            cache=CacheConfig(block_size=4, **({"num_blocks": 64} | cache)),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16),
            lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(adapters)),
        )
    )


def run(engine: LLMEngine, requests: list[tuple[list[int], str | None]], **params) -> list:
    """Submit all requests at once; return each one's output token ids."""
    outputs: dict[str, list[int]] = {}
    for i, (prompt, adapter) in enumerate(requests):
        engine.add_request(str(i), prompt, SamplingParams(**params), adapter)
        outputs[str(i)] = []
    steps = 0
    while engine.has_unfinished():
        for out in engine.step():
            outputs[out.request_id].extend(out.token_ids)
        steps += 1
    assert steps < 500
    return [outputs[str(i)] for i in range(len(requests))]


def save_store(root: Path, adapters: dict[str, dict]) -> tuple[Path, Path]:
    """(tiny model folder, adapters folder) under ``root``: adapter ``i`` of ``adapters``
    (name -> PEFT LoraConfig fields) drawn with seed ``i + 1``."""
    model_dir = save_tiny_model(root / "model")
    for seed, (name, config) in enumerate(adapters.items(), start=1):
        save_adapter(model_dir, root / "adapters" / name, seed, **config)
    return model_dir, root / "adapters"
