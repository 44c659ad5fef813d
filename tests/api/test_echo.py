"""End to end, with the real ``openai`` client: ``echo`` on ``/v1/completions`` (the prompt ahead
of the completion, and with ``logprobs`` the prompt tokens' logprobs, checked against the HF
model's own log-softmax), as lm-evaluation-harness uses it to score text."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import torch
from completion_helpers import GREEDY, PROMPT
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def prompt_ids(chat_model_dir: Path) -> list[int]:
    return AutoTokenizer.from_pretrained(chat_model_dir)(PROMPT).input_ids


def hf_prompt_logprobs(model_dir: Path, ids: list[int]) -> list[float]:
    """log p(token i | tokens before it) for i >= 1, from one HF forward over the prompt."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_echo_with_logprobs_scores_the_prompt(
    chat_client: openai.OpenAI, base_name: str, chat_model_dir: Path, prompt_ids: list[int]
) -> None:
    plain = chat_client.completions.create(model=base_name, prompt=PROMPT, logprobs=2, **GREEDY)
    echoed = chat_client.completions.create(
        model=base_name, prompt=PROMPT, logprobs=2, echo=True, **GREEDY
    )
    [choice], [reference] = echoed.choices, plain.choices
    assert choice.text == PROMPT + reference.text
    lp, completion = choice.logprobs, reference.logprobs
    n = len(prompt_ids)
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    assert lp.tokens == [tokenizer.decode([i]) for i in prompt_ids] + completion.tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = hf_prompt_logprobs(chat_model_dir, prompt_ids)
    assert lp.token_logprobs[1:n] == pytest.approx(expected, abs=1e-4)
    assert lp.token_logprobs[n:] == pytest.approx(completion.token_logprobs, abs=1e-5)
    for token, logprob, top in zip(
        lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True
    ):
        assert top[token] == logprob and 1 <= len(top) <= 3
    # Offsets count decoded characters: the prompt's tokens', then the completion's after them.
    widths = [len(tokenizer.decode([i])) for i in prompt_ids]
    head = [sum(widths[:i]) for i in range(n)]
    assert lp.text_offset == head + [sum(widths) + o for o in completion.text_offset]
    assert echoed.usage.prompt_tokens == n  # usage counts are not changed by echo


def test_streamed_echo_matches_the_whole_response(
    chat_client: openai.OpenAI, base_name: str
) -> None:
    kwargs = {"model": base_name, "prompt": PROMPT, "logprobs": 1, "echo": True, **GREEDY}
    whole = chat_client.completions.create(**kwargs).choices[0]
    chunks = [c.choices[0] for c in chat_client.completions.create(stream=True, **kwargs)]
    assert "".join(c.text for c in chunks) == whole.text
    assert chunks[0].text.startswith(PROMPT)
    parts = [c.logprobs for c in chunks if c.logprobs]
    assert [t for p in parts for t in p.tokens] == whole.logprobs.tokens
    assert [x for p in parts for x in p.token_logprobs] == whole.logprobs.token_logprobs
    assert [x for p in parts for x in p.text_offset] == whole.logprobs.text_offset


def test_echo_without_logprobs_and_with_many_prompts(
    chat_client: openai.OpenAI, base_name: str, tiny_adapter_name: str, prompt_ids: list[int]
) -> None:
    prompts = [PROMPT, "Hello there"]
    plain = chat_client.completions.create(model=tiny_adapter_name, prompt=prompts, **GREEDY)
    echoed = chat_client.completions.create(
        model=tiny_adapter_name, prompt=prompts, echo=True, n=2, **GREEDY
    )
    assert [c.index for c in echoed.choices] == [0, 1, 2, 3]
    for c in echoed.choices:  # choice i is sample i % 2 of prompt i // 2 (greedy: the same)
        assert c.text == prompts[c.index // 2] + plain.choices[c.index // 2].text
        assert c.logprobs is None
    # A token-id prompt echoes as its decoded text.
    by_ids = chat_client.completions.create(model=base_name, prompt=prompt_ids, echo=True, **GREEDY)
    assert by_ids.choices[0].text.startswith(PROMPT)


def test_echo_logprobs_never_come_from_the_prefix_cache(
    chat_client: openai.OpenAI, base_name: str
) -> None:
    """Cached tokens have no logits, so a scoring request computes its whole prompt."""
    prompt = "one two three four five six seven eight nine ten eleven twelve " * 2
    kwargs = {"model": base_name, "prompt": prompt, "logprobs": 0, "echo": True, **GREEDY}
    chat_client.completions.create(model=base_name, prompt=prompt, **GREEDY)  # fills the cache
    again = chat_client.completions.create(model=base_name, prompt=prompt, **GREEDY)
    assert again.usage.prompt_tokens_details.cached_tokens > 0  # so the cache could serve it
    first = chat_client.completions.create(**kwargs)
    second = chat_client.completions.create(**kwargs)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == 0
    assert first.choices[0].logprobs == second.choices[0].logprobs
