"""The engine on the tiny two-layer model with both Triton backends (add_lora and attention,
under the interpreter): the greedy tokens of the torch backends and of PEFT."""

from __future__ import annotations

from pathlib import Path

from test_llm_engine import peft_greedy
from triton_check import triton_tests

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

pytestmark = triton_tests
# A chunked prompt (longer than a step's budget), a short one, and a base-model request.
REQUESTS = [(list(range(20, 33)), "all"), ([5, 6, 7], "attn"), ([40, 41, 42, 43], None)]
NEW_TOKENS = 5


def engine(store: tuple[Path, Path], backend: str) -> LLMEngine:
    model_dir, adapters = store
    return build_engine(
        Config(
            model=ModelConfig(model=str(model_dir), max_model_len=64, attention_backend=backend),
            cache=CacheConfig(block_size=4, num_blocks=32),
            scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=12),
            lora=LoRAConfig(
                max_loras=2, max_lora_rank=8, adapters_dir=str(adapters), kernel=backend
            ),
        )
    )


def greedy(engine: LLMEngine) -> list[list[int]]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    for i, (prompt, adapter) in enumerate(REQUESTS):
        engine.add_request(str(i), prompt, params, adapter)
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(REQUESTS))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
    return [tokens[str(i)] for i in range(len(REQUESTS))]


def test_triton_backends_give_the_greedy_tokens_of_torch_and_peft(store) -> None:
    triton = engine(store, "triton")
    assert triton.runner.lora.context.add_lora.__module__.endswith("triton_ops")
    assert triton.runner.attend.__module__.endswith("attention.triton")
    got = greedy(triton)
    assert got == greedy(engine(store, "torch"))
    for (prompt, adapter), tokens in zip(REQUESTS, got, strict=True):
        assert tokens == peft_greedy(store, prompt, adapter, NEW_TOKENS), adapter
