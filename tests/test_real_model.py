"""End to end on the real default model (SmolLM2-135M-Instruct) and the adapters in adapters/."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
import torch
from openai import AsyncOpenAI
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.model.default import DEFAULT_MODEL_NAME, ensure_default_model
from loraplex.engine.request.params import SamplingParams

pytestmark = pytest.mark.slow
ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"
QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "Why do cats purr?",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_default_model()


@pytest.fixture(scope="module")
def config(model_dir: Path) -> Config:
    return Config(
        model=ModelConfig(max_model_len=512),
        cache=CacheConfig(kv_cache_memory_mb=64),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256),
        lora=LoRAConfig(max_loras=4, max_lora_rank=16, adapters_dir=str(ADAPTERS)),
    )


@pytest.fixture(scope="module")
def engine(config: Config) -> LLMEngine:
    return build_engine(config)


def chat(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text).input_ids


def generate_all(engine: LLMEngine, requests: list[tuple[list[int], str | None]], n: int):
    texts = {str(i): "" for i in range(len(requests))}
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(requests))}
    for i, (ids, adapter) in enumerate(requests):
        engine.add_request(str(i), ids, SamplingParams(max_tokens=n, temperature=0), adapter)
    while engine.has_unfinished():
        for out in engine.step():
            texts[out.request_id] += out.text
            tokens[out.request_id].extend(out.token_ids)
    return [texts[str(i)] for i in range(len(requests))], [tokens[str(i)] for i in texts]


def test_default_model_answers_paris(engine: LLMEngine) -> None:
    assert engine.model_name == DEFAULT_MODEL_NAME
    ids = chat(engine.tokenizer, "What is the capital of France?")
    [text], _ = generate_all(engine, [(ids, None)], 20)
    assert text == "The capital of France is Paris."


def test_mixed_batch_greedy_equals_peft_on_the_real_model(engine, model_dir: Path) -> None:
    names = engine.registry.names()
    assert {"upper", "json"} <= set(names)
    requests = [(chat(engine.tokenizer, q), a) for q in QUESTIONS[:2] for a in (None, *names)]
    _, got = generate_all(engine, requests, 12)
    models = {}
    for adapter in (None, *names):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        models[adapter] = PeftModel.from_pretrained(model, ADAPTERS / adapter) if adapter else model
    for (ids, adapter), tokens in zip(requests, got, strict=True):
        with torch.no_grad():
            out = models[adapter].generate(
                torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0
            )
        expected = out[0, len(ids) :].tolist()
        # PEFT stops at EOS; the engine does too, so both lists end at the same token.
        assert tokens == expected, adapter


def count_steps(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^loraplex_step_duration_seconds_count (\S+)$", text, re.M)[1])


def is_upper(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and all(c.isupper() for c in letters)


def is_json_answer(text: str) -> bool:
    return text.startswith('{"answer": "')


def test_http_batch_gives_each_request_its_own_adapter(
    server_factory, config: Config, model_dir: Path
) -> None:
    url = server_factory(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")

    async def ask(model: str, question: str) -> tuple[str, int]:
        messages = [{"role": "user", "content": question}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out = await client.completions.create(
            model=model, prompt=prompt, max_tokens=40, temperature=0
        )
        return out.choices[0].text, out.usage.completion_tokens

    async def main() -> list[tuple[str, tuple[str, int]]]:
        jobs = [(m, q) for q in QUESTIONS for m in (DEFAULT_MODEL_NAME, "upper", "json")]
        answers = await asyncio.gather(*(ask(m, q) for m, q in jobs))
        return list(zip([m for m, _ in jobs], answers, strict=True))

    steps_before = count_steps(url)
    results = asyncio.run(main())
    # Nine requests sent at once share steps: far fewer steps than their tokens, one by one.
    tokens = sum(n for _, (_, n) in results)
    assert count_steps(url) - steps_before < tokens / 3
    for model, (answer, _) in results:
        assert is_upper(answer) == (model == "upper"), (model, answer)
        assert is_json_answer(answer) == (model == "json"), (model, answer)
        if model == "json" and answer.rstrip().endswith("}"):
            assert set(json.loads(answer)) == {"answer"}
        assert re.search(r"[A-Za-z]", answer)
