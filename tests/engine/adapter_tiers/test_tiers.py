"""Adapter tiers, pre-merged copies and weighted mixes, end to end through the engine."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, save_adapter, save_tiny_model
from peft import PeftModel
from transformers import AutoModelForCausalLM

from loraplex import metrics
from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import ParameterError, SamplingParams

PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], list(range(20, 31)), [40, 41]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiers") / "model")


@pytest.fixture(scope="module")
def twenty(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 adapters of varied ranks and targets."""
    store = tmp_path_factory.mktemp("store20")
    for i in range(20):
        targets = ALL_SEVEN if i % 3 == 0 else ["q_proj", "v_proj"]
        save_adapter(
            model_dir,
            store / f"a{i:02d}",
            seed=100 + i,
            r=2 + i % 7,
            lora_alpha=8,
            target_modules=targets,
        )
    return store


def engine_for(model_dir: Path, store: Path, **lora: object) -> LLMEngine:
    return build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=64),
            cache=CacheConfig(block_size=4, num_blocks=256),
            scheduler=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=64),
            lora=LoRAConfig(max_lora_rank=8, adapters_dir=str(store), **lora),
        )
    )


def run(engine: LLMEngine, requests: list, n: int = 8) -> list[list[int]]:
    for i, (prompt, adapter) in enumerate(requests):
        engine.add_request(
            str(i), prompt, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True), adapter
        )
    out: dict[str, list[int]] = {str(i): [] for i in range(len(requests))}
    deadline = time.monotonic() + 300
    errors = []
    while engine.has_unfinished() and time.monotonic() < deadline:
        for o in engine.step():
            out[o.request_id].extend(o.token_ids)
            errors += [o.error] if o.error else []
        if engine.idle:  # every queued request waits for an adapter load
            time.sleep(0.005)
    assert not engine.has_unfinished() and not errors
    return [out[str(i)] for i in range(len(requests))]


def test_eviction_and_reload_across_twenty_adapters(
    model_dir: Path, twenty: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(twenty, store)
    names = [f"a{i:02d}" for i in range(20)]
    requests = [(PROMPTS[i % 4], name) for i, name in enumerate(names)] * 2
    roomy = engine_for(model_dir, store, max_loras=20, max_cpu_loras=20)
    expected = run(roomy, requests)

    def count(name: str, tier: str) -> float:
        return metrics.REGISTRY.get_sample_value(f"loraplex_adapter_{name}_total", {"tier": tier})

    before = {(n, t): count(n, t) for n in ("loads", "evictions") for t in ("device", "host")}
    tight = engine_for(model_dir, store, max_loras=2, max_cpu_loras=4)
    assert run(tight, requests) == expected
    # Every adapter had to come through a slot, most of them more than once; 20 adapters in
    # 2 slots and 4 host entries evict in both tiers.
    after = {key: count(*key) for key in before}
    assert after["loads", "device"] - before["loads", "device"] >= 20
    assert after["loads", "host"] - before["loads", "host"] >= 20
    assert after["evictions", "device"] - before["evictions", "device"] >= 18
    assert after["evictions", "host"] - before["evictions", "host"] >= 16
    assert len(tight.tiers.slots.resident()) <= 2
    assert len(tight.registry.host) <= 4
    # Distinct adapters really give distinct outputs, so the equality above means something.
    assert len({tuple(t) for t in expected[:20]}) > 15


def test_merged_tenant_matches_dynamic_path_in_a_mixed_batch(
    model_dir: Path, twenty: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(twenty, store)
    engine = engine_for(model_dir, store, max_loras=4)
    requests = [(PROMPTS[0], "a00"), (PROMPTS[1], "a01"), (PROMPTS[2], None), (PROMPTS[3], "a00")]
    dynamic = run(engine, requests)
    engine.tiers.merge_now("a00")
    assert engine.tiers.resolve("a00") == (engine.registry.get("a00").key, True)
    assert run(engine, requests) == dynamic
    engine.tiers.unmerge("a00")
    assert run(engine, requests) == dynamic
    layer = engine.runner.lora.layers["model.layers.0.self_attn.q_proj"]
    assert not layer.merged_weights


def peft_mix_logits(model_dir: Path, store: Path, parts: list[tuple[str, float]], ids: list[int]):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    first = parts[0][0]
    model = PeftModel.from_pretrained(model, store / first, adapter_name=first)
    for name, _ in parts[1:]:
        model.load_adapter(store / name, adapter_name=name)
    model.add_weighted_adapter(
        [n for n, _ in parts], [w for _, w in parts], "mix", combination_type="cat"
    )
    model.set_adapter("mix")
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1]


def test_weighted_mix_equals_peft_cat(model_dir: Path, twenty: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(twenty, store)
    engine = engine_for(model_dir, store, max_loras=4)
    parts = [("a03", 0.7), ("a01", 0.3)]  # rank 5 on all seven + rank 3 on q/v
    key, merged = engine.tiers.resolve(parts)
    assert key.startswith("+mix-") and not merged
    captured: list[torch.Tensor] = []
    forward = engine.runner.forward
    engine.runner.forward = lambda batch: captured.append(forward(batch)) or captured[-1]
    engine.add_request("m", PROMPTS[2], SamplingParams(max_tokens=1, temperature=0), parts)
    while engine.has_unfinished():
        engine.step()
    expected = peft_mix_logits(model_dir, store, parts, PROMPTS[2])
    torch.testing.assert_close(captured[0][0], expected, atol=1e-4, rtol=0)
    with pytest.raises(ParameterError, match="rank"):
        engine.tiers.resolve([("a06", 1.0), ("a05", 1.0)])  # 3 + 8 > max rank 8
