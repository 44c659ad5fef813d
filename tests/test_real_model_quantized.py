"""The real default model (SmolLM2-135M-Instruct) as an NF4 base, quantized at load and read
from a folder saved quantized: the shipped adapters give PEFT's greedy tokens on the same NF4
base in one mixed batch, and the weights take well under half their float32 bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.model.default import DEFAULT_MODEL_NAME, ensure_default_model
from loraplex.engine.request.params import SamplingParams

pytestmark = pytest.mark.slow
pytest.importorskip("bitsandbytes")
ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"
QUESTIONS = ["What is the capital of France?", "Name a color of the sky."]
TOKENS = 8
TIE = 0.25  # logits: a near tie between PEFT's two best tokens
NF4 = BitsAndBytesConfig(
    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model saved quantized by transformers, under its own name (the adapters'
    base_model_name_or_path matches it)."""
    source = ensure_default_model()
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=NF4, device_map="cpu")
    folder = tmp_path_factory.mktemp("nf4") / DEFAULT_MODEL_NAME
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, folder)
    return folder


def engine_on(model: str | None, quantization: str | None) -> LLMEngine:
    return build_engine(
        Config(
            model=ModelConfig(model=model, max_model_len=512, quantization=quantization),
            cache=CacheConfig(kv_cache_memory_mb=32),
            scheduler=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=256),
            lora=LoRAConfig(max_loras=2, max_lora_rank=16, adapters_dir=str(ADAPTERS)),
        )
    )


def chat(tokenizer, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text).input_ids


def generate_all(engine: LLMEngine, requests: list[tuple[list[int], str | None]]) -> list:
    tokens: dict[str, list[int]] = {str(i): [] for i in range(len(requests))}
    for i, (ids, adapter) in enumerate(requests):
        params = SamplingParams(max_tokens=TOKENS, temperature=0)
        engine.add_request(str(i), ids, params, adapter)
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
    return [tokens[str(i)] for i in range(len(requests))]


class PeftOracle:
    """PEFT on the NF4 folder with both shipped adapters loaded (one base, switched)."""

    def __init__(self, folder: Path) -> None:
        base = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu").eval()
        self.model = PeftModel.from_pretrained(base, ADAPTERS / "upper", adapter_name="upper")
        self.model.load_adapter(ADAPTERS / "json", adapter_name="json")
        self.texts: dict[tuple[tuple[int, ...], str | None], list[int]] = {}

    @torch.no_grad()
    def run(self, adapter: str | None, fn):
        if adapter is None:
            with self.model.disable_adapter():
                return fn(self.model)
        self.model.set_adapter(adapter)
        return fn(self.model)

    def greedy(self, ids: list[int], adapter: str | None) -> list[int]:
        key = (tuple(ids), adapter)
        if key not in self.texts:  # both engines are checked against the same answers
            args = {"input_ids": torch.tensor([ids]), "max_new_tokens": TOKENS, "do_sample": False}
            out = self.run(adapter, lambda m: m.generate(**args, pad_token_id=0))
            self.texts[key] = out[0, len(ids) :].tolist()
        return self.texts[key]

    def logits(self, ids: list[int], adapter: str | None) -> torch.Tensor:
        """The next token's logits after ``ids``, computed over the whole sequence at once."""
        return self.run(adapter, lambda m: m(input_ids=torch.tensor([ids])).logits[0, -1])


def agrees(oracle: PeftOracle, ids: list[int], adapter: str | None, got: list[int]) -> str:
    """``exact`` if ``got`` is PEFT's greedy text; ``tie`` if they part where PEFT's own two
    best tokens are within TIE logits (the CPU NF4 kernel rounds activations to bfloat16, so
    PEFT itself picks either one, by whether it runs the sequence at once or token by token)."""
    expected = oracle.greedy(ids, adapter)
    if got == expected:
        return "exact"
    n = next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
    logits = oracle.logits(ids + got[:n], adapter)
    gap = (logits[expected[n]] - logits[got[n]]).abs().item()
    top2 = set(logits.topk(2).indices.tolist())
    assert {got[n], expected[n]} == top2 and gap < TIE, (adapter, n, gap)
    return "tie"


def test_nf4_base_mixed_batch_equals_peft_in_flight_and_saved(saved: Path) -> None:
    from_folder = engine_on(str(saved), None)
    requests = [
        (chat(from_folder.tokenizer, q), a) for q in QUESTIONS for a in (None, "upper", "json")
    ]
    oracle = PeftOracle(saved)
    in_flight = engine_on(None, "bitsandbytes")  # the default model, quantized as it loads
    verdicts = []
    for engine in (from_folder, in_flight):
        got = generate_all(engine, requests)
        verdicts += [agrees(oracle, ids, a, t) for (ids, a), t in zip(requests, got, strict=True)]
        assert len({tuple(t) for t in got[:3]}) == 3  # base, upper and json all differ
    assert verdicts.count("exact") >= len(verdicts) - 2, verdicts
    runner = in_flight.runner
    assert runner.base_format == from_folder.runner.base_format == "bitsandbytes-nf4"
    projections = sum(i * o for i, o in runner.lora.module_shapes().values())
    as_float = runner.weight_bytes["float32"] + 4 * projections
    assert as_float / sum(runner.weight_bytes.values()) >= 2  # issue 20's target
