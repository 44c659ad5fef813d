"""End to end, with the real ``openai`` client: ``logprobs`` (legacy and chat shapes, streamed
or not, checked against the HF model's own log-softmax), TGI's token logprobs and
``top_n_tokens`` on ``/generate``, and ``n`` choices per prompt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import openai
import pytest
import torch
from adapter_files import sse_events
from completion_helpers import GREEDY, PROMPT
from transformers import AutoModelForCausalLM, AutoTokenizer

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def hf_greedy_logprobs(model_dir: Path, prompt: str, steps: int) -> list[float]:
    """The logprob of each greedy token, from the HF model run on the growing sequence."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    found = []
    with torch.inference_mode():
        for _ in range(steps):
            logp = model(ids).logits[0, -1].float().log_softmax(-1)
            found.append(float(logp.max()))
            ids = torch.cat([ids, logp.argmax().view(1, 1)], dim=1)
    return found


def test_completion_logprobs_are_the_models_own(
    chat_client: openai.OpenAI, base_name: str, chat_model_dir: Path
) -> None:
    response = chat_client.completions.create(model=base_name, prompt=PROMPT, logprobs=3, **GREEDY)
    [choice] = response.choices
    lp = choice.logprobs
    assert lp is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    expected = hf_greedy_logprobs(chat_model_dir, PROMPT, 8)
    assert lp.token_logprobs == pytest.approx(expected, abs=1e-4)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert token in top and top[token] == logprob
        assert 1 <= len(top) <= 4  # the 3 most likely and the sampled one (greedy: among them)
        assert logprob == pytest.approx(max(top.values()))  # greedy picks the most likely
    # The same greedy run, tokens named by id: offsets count each token's decoded characters.
    by_id = chat_client.completions.create(
        model=base_name,
        prompt=PROMPT,
        logprobs=3,
        **{**GREEDY, "extra_body": {**GREEDY["extra_body"], "return_tokens_as_token_ids": True}},
    ).choices[0]
    assert by_id.logprobs is not None
    ids = [int(t.removeprefix("token_id:")) for t in by_id.logprobs.tokens]
    assert by_id.logprobs.token_logprobs == lp.token_logprobs
    assert all(all(k.startswith("token_id:") for k in top) for top in by_id.logprobs.top_logprobs)
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    assert tokenizer.decode(ids) == choice.text
    offsets = [sum(len(tokenizer.decode([i])) for i in ids[:k]) for k in range(8)]
    assert lp.text_offset == by_id.logprobs.text_offset == offsets


def test_streamed_completion_logprobs_match_the_whole_response(
    chat_client: openai.OpenAI, base_name: str
) -> None:
    whole = chat_client.completions.create(model=base_name, prompt=PROMPT, logprobs=2, **GREEDY)
    chunks = list(
        chat_client.completions.create(
            model=base_name, prompt=PROMPT, logprobs=2, stream=True, **GREEDY
        )
    )
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    expected = whole.choices[0].logprobs
    assert [t for p in parts for t in p.tokens] == expected.tokens
    assert [x for p in parts for x in p.token_logprobs] == expected.token_logprobs
    assert [x for p in parts for x in p.text_offset] == expected.text_offset


def test_no_logprobs_unless_asked(chat_client: openai.OpenAI, base_name: str) -> None:
    response = chat_client.completions.create(model=base_name, prompt=PROMPT, **GREEDY)
    assert response.choices[0].logprobs is None
    chat = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    assert chat.choices[0].logprobs is None


def test_chat_logprobs_with_top_alternatives(chat_client: openai.OpenAI, base_name: str) -> None:
    kwargs = {"logprobs": True, "top_logprobs": 3, **GREEDY}
    whole = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **kwargs)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 8
    # The tokens' raw bytes make the reply (a piece of a character is "bytes:\\x..").
    text = b"".join(bytes(e.bytes) for e in content).decode(errors="replace")
    assert text == whole.choices[0].message.content
    for entry in content:
        if not entry.token.startswith("bytes:"):
            assert entry.bytes == list(entry.token.encode())
        values = [t.logprob for t in entry.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert entry.logprob == pytest.approx(values[0])  # greedy
        assert all(v <= 0 and math.isfinite(v) for v in values)
    stream = chat_client.chat.completions.create(
        model=base_name, messages=MESSAGES, stream=True, **kwargs
    )
    streamed = [
        e
        for c in stream
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    by_id = chat_client.chat.completions.create(
        model=base_name,
        messages=MESSAGES,
        **{**kwargs, "extra_body": {**GREEDY["extra_body"], "return_tokens_as_token_ids": True}},
    ).choices[0]
    assert by_id.logprobs is not None
    for entry, named in zip(by_id.logprobs.content, content, strict=True):
        assert entry.token.startswith("token_id:") and entry.bytes == named.bytes
        assert all(t.token.startswith("token_id:") for t in entry.top_logprobs)


def test_n_choices_per_prompt_in_openai_order(chat_client: openai.OpenAI, base_name: str) -> None:
    prompts = [PROMPT, "Once upon a time"]
    greedy = [
        chat_client.completions.create(model=base_name, prompt=p, **GREEDY).choices[0].text
        for p in prompts
    ]
    single = chat_client.completions.create(model=base_name, prompt=prompts, **GREEDY)
    response = chat_client.completions.create(model=base_name, prompt=prompts, n=2, **GREEDY)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [c.text for c in response.choices] == [greedy[0], greedy[0], greedy[1], greedy[1]]
    assert response.usage.completion_tokens == 4 * 8
    assert response.usage.prompt_tokens == single.usage.prompt_tokens  # each prompt once


def test_seeded_samples_differ_from_each_other_and_repeat_exactly(
    chat_client: openai.OpenAI, base_name: str
) -> None:
    kwargs = {"temperature": 1.0, "max_tokens": 8, "seed": 11, "n": 3}
    kwargs["extra_body"] = {"ignore_eos": True}
    first = chat_client.completions.create(model=base_name, prompt=PROMPT, **kwargs)
    again = chat_client.completions.create(model=base_name, prompt=PROMPT, **kwargs)
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices]
    assert len(set(texts)) > 1
    # Sample 0 is the request with that seed alone; sample j runs with seed + j.
    alone = chat_client.completions.create(model=base_name, prompt=PROMPT, **{**kwargs, "n": 1})
    assert alone.choices[0].text == texts[0]
    shifted = chat_client.completions.create(
        model=base_name, prompt=PROMPT, **{**kwargs, "n": 1, "seed": 12}
    )
    assert shifted.choices[0].text == texts[1]


def test_streamed_chat_with_n_choices(chat_client: openai.OpenAI, base_name: str) -> None:
    kwargs = {"temperature": 1.0, "max_tokens": 6, "seed": 3, "n": 2}
    whole = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **kwargs)
    chunks = list(
        chat_client.chat.completions.create(
            model=base_name, messages=MESSAGES, stream=True, **kwargs
        )
    )
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role]
    assert sorted(roles) == [0, 1]
    texts = ["", ""]
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == [c.message.content for c in whole.choices]
    assert [c.index for c in whole.choices] == [0, 1]


def test_tgi_token_logprobs_and_top_n_tokens(
    chat_client: openai.OpenAI, base_name: str, chat_url: str
) -> None:
    completion = chat_client.completions.create(
        model=base_name, prompt=PROMPT, logprobs=2, **GREEDY
    )
    expected = completion.choices[0].logprobs.token_logprobs
    parameters = {"max_new_tokens": 8, "details": True, "top_n_tokens": 2}
    body = {"inputs": PROMPT, "parameters": parameters}
    whole = httpx.post(f"{chat_url}/generate", json=body, timeout=120).json()["details"]
    assert [t["logprob"] for t in whole["tokens"]] == pytest.approx(expected, abs=1e-6)
    assert [len(top) for top in whole["top_tokens"]] == [2] * 8
    for token, top in zip(whole["tokens"], whole["top_tokens"], strict=True):
        assert top[0]["id"] == token["id"] and top[0]["logprob"] == token["logprob"]  # greedy
        assert top[0]["logprob"] >= top[1]["logprob"]
    stream = httpx.post(f"{chat_url}/generate_stream", json=body, timeout=120)
    tokens = [json.loads(event)["token"] for event in sse_events(stream)]
    assert [t["logprob"] for t in tokens] == [t["logprob"] for t in whole["tokens"]]
