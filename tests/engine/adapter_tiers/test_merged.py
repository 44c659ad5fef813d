"""Pre-merged copies (engine/adapter_tiers/merged.py): a running request keeps the weights it
started on across unmerge, delete and replace; copies are capped and counted; unmerging leaves W0
exact."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.adapter_tiers.pins import CapacityError
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

PROMPT = [5, 6, 7, 8, 9]
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture
def store(store: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """The module's model with a fresh copy of its adapters (tests here delete some)."""
    model_dir, adapters = store
    return model_dir, Path(shutil.copytree(adapters, tmp_path / "adapters"))


def engine_for(store: tuple[Path, Path], **lora: object) -> LLMEngine:
    model_dir, adapters = store
    return build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=64),
            cache=CacheConfig(block_size=4, num_blocks=64),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16),
            lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(adapters), **lora),
        )
    )


def generate(
    engine: LLMEngine, adapter: str | None, after: int = -1, action: Callable[[], None] = list
) -> list[int]:
    """One greedy request to the end; ``action`` runs between steps once ``after`` tokens came."""
    engine.add_request("r", PROMPT, GREEDY, adapter)
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            assert out.error is None, out.error
            tokens += out.token_ids
            if len(tokens) == after:
                action()
    return tokens


def merged_bytes(engine: LLMEngine, name: str) -> int:
    return engine.tiers.merges.nbytes(engine.registry.get(name).key)


def test_unmerge_mid_stream_keeps_the_copy_until_the_request_ends(
    store: tuple[Path, Path],
) -> None:
    engine = engine_for(store)
    dynamic = generate(engine, "all")
    base = generate(engine, None)
    engine.tiers.merge_now("all")
    held = merged_bytes(engine, "all")
    assert held > 0 and engine.tiers.resolve("all")[1] is True
    seen: list[tuple[bool, int]] = []

    def unmerge() -> None:
        engine.tiers.unmerge("all")
        # New requests run dynamically at once; the copy stays for the one running on it.
        seen.append((engine.tiers.resolve("all")[1], merged_bytes(engine, "all")))

    assert generate(engine, "all", after=3, action=unmerge) == dynamic
    assert seen == [(False, held)]
    assert merged_bytes(engine, "all") == 0  # dropped with its last sequence
    assert not any(layer.merged_weights for layer in engine.runner.lora.layers.values())
    assert generate(engine, "all") == dynamic and generate(engine, None) == base


@pytest.mark.parametrize("kind", ["merged", "dynamic"])
def test_delete_mid_stream_finishes_on_the_same_weights(
    store: tuple[Path, Path], kind: str
) -> None:
    engine = engine_for(store)
    expected = generate(engine, "attn")
    if kind == "merged":
        engine.tiers.merge_now("attn")
    key = engine.registry.get("attn").key

    def delete() -> None:  # what AdapterService.remove does, between two steps
        engine.registry.remove("attn")
        engine.tiers.forget(key)

    assert generate(engine, "attn", after=2, action=delete) == expected
    assert engine.tiers.merges.nbytes(key) == 0
    assert key not in engine.registry.host  # released and retired after its last sequence


def test_prepared_on_a_copy_that_is_gone_runs_dynamically(store: tuple[Path, Path]) -> None:
    engine = engine_for(store)
    expected = generate(engine, "all")
    engine.tiers.merge_now("all")
    parent = engine.prepare("late", [PROMPT], GREEDY, "all")
    assert parent.merged
    engine.tiers.unmerge("all")  # dropped at once: nothing runs on it yet
    engine.submit(parent)
    assert not parent.merged and not parent.children[0].seq.merged
    tokens: list[int] = []
    while engine.has_unfinished():
        tokens += [t for out in engine.step() for t in out.token_ids]
    assert tokens == expected


def test_copies_are_capped_and_unmerge_leaves_w0_exact(store: tuple[Path, Path]) -> None:
    engine = engine_for(store, max_merged_adapters=1)
    layer = engine.runner.lora.layers["model.layers.0.self_attn.q_proj"]
    w0 = layer.base.weight.detach().clone()
    engine.tiers.merge_now("attn")
    with pytest.raises(CapacityError, match="--max-merged-adapters"):
        engine.tiers.merge_now("all")
    engine.tiers.merge_now("attn")  # merged already: no second copy
    # A leaving copy still counts until its request ends.
    engine.add_request("x", PROMPT, GREEDY, "attn")
    engine.step()
    engine.tiers.unmerge("attn")
    with pytest.raises(CapacityError, match="until their running requests finish"):
        engine.tiers.merge_now("all")
    while engine.has_unfinished():
        engine.step()
    engine.tiers.merge_now("all")
    assert merged_bytes(engine, "all") > 0
    engine.tiers.unmerge("all")
    assert torch.equal(layer.base.weight, w0) and not layer.merged_weights
    with pytest.raises(CapacityError, match="--max-merged-adapters"):
        engine_for(store, max_merged_adapters=0).tiers.merge_now("attn")
