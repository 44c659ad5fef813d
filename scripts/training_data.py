"""The training data of ``scripts/train_adapters.py``, by self-distillation: the base model's
greedy answers to the prompts (batched, cached on disk), cut into short targets, tokenized into
chat examples with the loss on the answer only, and batched by length with right padding.

``train_adapters.py`` puts ``server/`` on ``sys.path`` first when loraplex is not installed.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from loraplex.paths import cache_root

BATCH_SIZE = 8
GEN_BATCH_SIZE = 16
DISTILL_MAX_NEW_TOKENS = 40


def chat_prompt(tokenizer: PreTrainedTokenizerBase, user: str) -> str:
    """The chat-templated prompt for one user message, ending with the assistant header."""
    messages = [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
) -> list[tuple[str, bool]]:
    """Greedy answers to ``prompts`` (batched, left padded) as ``(text, finished)`` pairs.

    ``finished`` is False when the answer was cut by ``max_new_tokens`` instead of ending with
    the end-of-turn token.
    """
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    results: list[tuple[str, bool]] = []
    for i in range(0, len(prompts), GEN_BATCH_SIZE):
        texts = [chat_prompt(tokenizer, p) for p in prompts[i : i + GEN_BATCH_SIZE]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in out[:, batch["input_ids"].shape[1] :].tolist():
            finished = eos in row
            if finished:
                row = row[: row.index(eos)]
            results.append((tokenizer.decode(row, skip_special_tokens=True).strip(), finished))
    return results


def trim_answer(text: str, finished: bool) -> str:
    """Cut a truncated answer back to its last complete sentence, when one is long enough."""
    if finished:
        return text
    cut = max(text.rfind(c) for c in ".!?")
    return text[: cut + 1] if cut >= 20 else text


def clean_answer(text: str, min_chars: int = 40) -> str:
    """Shorten a base answer into a training target.

    The answer is cut after its first sentence that ends past ``min_chars`` characters (short
    targets keep training cheap on CPU and keep the adapters' answers short, so that a JSON
    answer closes well within a small ``max_tokens``), and a dangling list marker
    (``"...\n\n2."``) left where a truncated answer was cut is dropped.
    """
    for end in re.finditer(r"[.!?](?=\s|$)", text):
        if end.end() >= min_chars:
            text = text[: end.end()]
            break
    return re.sub(r"\s*\n\s*\d+\.\s*$", "", text).strip()


def base_answers(model_path: Path, prompts: Sequence[str]) -> list[str]:
    """The base model's greedy answers to ``prompts``, cached on disk after the first run."""
    key = hashlib.sha256(
        json.dumps([str(model_path), DISTILL_MAX_NEW_TOKENS, list(prompts)]).encode()
    ).hexdigest()[:16]
    cache = cache_root() / "train_adapters" / f"base_answers-{key}.json"
    if cache.is_file():
        print(f"using cached base answers: {cache}")
        return [clean_answer(a) for a in json.loads(cache.read_text())]
    print(f"generating base answers for {len(prompts)} prompts ...")
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    answers = [
        trim_answer(text, finished)
        for text, finished in generate(model, tokenizer, prompts, DISTILL_MAX_NEW_TOKENS)
    ]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(answers, indent=1))
    print(f"  done in {time.perf_counter() - t0:.0f} s, cached in {cache}")
    return [clean_answer(a) for a in answers]


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], targets: Sequence[str]
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels per example; labels are -100 on the prompt (loss on the answer)."""
    examples = []
    for prompt, target in zip(prompts, targets, strict=True):
        p_ids = tokenizer(chat_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        a_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
        a_ids = [*a_ids, tokenizer.eos_token_id]
        examples.append(([*p_ids, *a_ids], [-100] * len(p_ids) + a_ids))
    return examples


def collate(
    examples: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad a batch into ``(input_ids, attention_mask, labels)`` tensors."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
        labels[row, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def length_grouped_batches(lengths: Sequence[int], group: int = 4) -> list[list[int]]:
    """One shuffled epoch of index batches of ``BATCH_SIZE``, each of similar lengths.

    The shuffled indices are cut into pools of ``group`` batches; each pool is sorted by length
    before it is cut into batches, which keeps the right padding (wasted CPU time) small.
    """
    order = random.sample(range(len(lengths)), len(lengths))
    pool = BATCH_SIZE * group
    batches = []
    for start in range(0, len(order) - BATCH_SIZE + 1, pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [
            chunk[i : i + BATCH_SIZE] for i in range(0, len(chunk) - BATCH_SIZE + 1, BATCH_SIZE)
        ]
    random.shuffle(batches)
    return batches
