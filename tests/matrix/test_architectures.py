"""The architecture matrix: every family of ``tiny_models.FAMILIES`` served by one engine, the
base model and two PEFT adapters in one mixed batch, compared token for token with HF
``generate`` and PEFT (greedy, float32, EOS ignored, a prompt longer than the sliding window,
chunked prefill). Window and softcap families also run through the Triton attention backend
(under Triton's interpreter on the CPU) and read their prompt back from the prefix cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import FAMILIES, WINDOW, hf_generate, save_adapters, save_tiny_model

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards

PROMPT = [(7 * i + 3) % 90 + 2 for i in range(3 * WINDOW - 2)]  # 22 tokens, no EOS (1)
NEW_TOKENS = 6
TRITON_TOKENS = 3
ADAPTERS = [None, "all", "attn"]


Tokens = tuple[list[int], list[float]]  # greedy tokens and their log-probabilities
CACHED: dict[str, int] = {}  # request id -> prompt tokens the last run read from the cache


def run(
    engine: LLMEngine, requests: list[tuple[list[int], str | None]], tokens: int = NEW_TOKENS
) -> list[Tokens]:
    """All requests submitted at once (one mixed batch), greedy; each one's tokens."""
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, logprobs=0)
    outputs: dict[str, Tokens] = {}
    for i, (prompt, adapter) in enumerate(requests):
        engine.add_request(str(i), prompt, params, adapter)
        outputs[str(i)] = ([], [])
    for _ in range(200):
        if not engine.has_unfinished():
            break
        for out in engine.step():
            CACHED[out.request_id] = out.num_cached_tokens
            outputs[out.request_id][0].extend(out.token_ids)
            outputs[out.request_id][1].extend(entry.logprob for entry in out.logprobs or ())
    return [outputs[str(i)] for i in range(len(requests))]


def assert_same(got: list[Tokens], expected: list[Tokens], what: str) -> None:
    """Token for token, and each token's log-probability within float32 noise."""
    for (tokens, logprobs), (want, want_logprobs), name in zip(
        got, expected, ADAPTERS, strict=True
    ):
        label = f"{what}, {name or 'base model'}"
        assert tokens == want, label
        assert logprobs == pytest.approx(want_logprobs, abs=1e-4), label


class World:
    """One family's model, adapters, oracle tokens and engine (built once per family)."""

    def __init__(self, root: Path, model_type: str) -> None:
        self.model_type = model_type
        self.model_dir = save_tiny_model(root / "model", model_type)
        self.adapters = save_adapters(self.model_dir, root / "adapters", model_type)
        self.expected = [
            hf_generate(self.model_dir, self.adapters.get(name), PROMPT, NEW_TOKENS)
            for name in ADAPTERS
        ]
        self.engine = build_engine(
            Config(
                model=ModelConfig(model=str(self.model_dir), max_model_len=64),
                cache=CacheConfig(block_size=4, num_blocks=48),
                # 16 tokens a step: the three 22-token prompts arrive in chunks
                scheduler=SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16),
                lora=LoRAConfig(max_loras=2, max_lora_rank=16, adapters_dir=str(root / "adapters")),
            )
        )

    def run_all(self, tokens: int = NEW_TOKENS) -> list[Tokens]:
        return run(self.engine, [(PROMPT, name) for name in ADAPTERS], tokens)


@pytest.fixture(scope="module", params=list(FAMILIES))
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp(request.param), request.param)


def test_base_and_adapters_match_hf_and_peft(world: World) -> None:
    got = world.run_all()
    assert world.engine.registry.refused() == {}
    assert_same(got, world.expected, world.model_type)
    # Each adapter changes the output, so the comparison tests its math.
    base = world.expected[0][1]
    for _, logprobs in world.expected[1:]:
        assert max(abs(a - b) for a, b in zip(logprobs, base, strict=True)) > 1e-3


@pytest.mark.triton
def test_window_families_match_through_triton_and_the_prefix_cache(world: World) -> None:
    if not FAMILIES[world.model_type].runs_triton:
        pytest.skip("plain attention, or a variant another family runs through Triton")
    pytest.importorskip("triton")
    from loraplex.engine.attention.triton import triton_attend

    world.engine.runner.attend = triton_attend  # same engine, the other backend
    # The prompt's full blocks are cached from the first test (same adapters): read back.
    # Three new tokens (the interpreter runs ~0.3 s a launch): the greedy prefix must match.
    got = world.run_all(TRITON_TOKENS)
    expected = [(tokens[:TRITON_TOKENS], lp[:TRITON_TOKENS]) for tokens, lp in world.expected]
    assert_same(got, expected, f"{world.model_type} (triton)")
    assert all(CACHED[str(i)] >= 4 * 4 for i in range(len(ADAPTERS)))  # blocks read back
