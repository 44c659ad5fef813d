"""End to end: ``/v1/chat/completions`` with the real ``openai`` client on a real uvicorn server.

The tiny tokenizer of conftest has no chat template; ``chat_url`` (tests/api/conftest.py) serves a
copy of the tiny model whose tokenizer has a simple one, ``live_server`` the original (chat there
is a 400).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from adapter_files import sse_events
from completion_helpers import GREEDY

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]


# ---- /v1/chat/completions -----------------------------------------------------------------


def test_chat_non_streamed(
    chat_client: openai.OpenAI, base_name: str, chat_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    response = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    assert response.id.startswith("chatcmpl-")
    assert response.object == "chat.completion"
    assert response.model == base_name
    [choice] = response.choices
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    rendered = "system: Answer briefly.\nuser: What is the capital of France?\nassistant: "
    assert tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False) == (
        rendered
    )
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(
        tokenizer(rendered, add_special_tokens=False)["input_ids"]
    )
    assert response.usage.completion_tokens == 8


def test_chat_equals_a_completion_of_the_rendered_prompt(
    chat_client: openai.OpenAI, base_name: str, chat_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chat = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    completion = chat_client.completions.create(model=base_name, prompt=ids, **GREEDY)
    assert chat.choices[0].message.content == completion.choices[0].text


def test_chat_stream_equals_non_stream(chat_client: openai.OpenAI, base_name: str) -> None:
    whole = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    stream = chat_client.chat.completions.create(
        model=base_name,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    *deltas, final, usage = chunks
    text = "".join(c.choices[0].delta.content or "" for c in deltas)
    assert text == whole.choices[0].message.content
    assert final.choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in deltas)
    assert usage.choices == []
    assert usage.usage is not None
    assert usage.usage.model_dump() == whole.usage.model_dump()  # type: ignore[union-attr]


def test_chat_sse_wire_format(chat_url: str, base_name: str) -> None:
    body = {"model": base_name, "messages": MESSAGES, "stream": True, "max_tokens": 3}
    response = httpx.post(f"{chat_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200
    *chunks, done = sse_events(response)
    assert done == "[DONE]"
    parsed = [json.loads(c) for c in chunks]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert parsed[-1]["choices"][0]["delta"] == {}
    assert parsed[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all("usage" not in c for c in parsed)  # only with stream_options.include_usage


def test_chat_text_parts_equal_a_string(chat_client: openai.OpenAI, base_name: str) -> None:
    parts = [{"type": "text", "text": t} for t in ("What is the capital", "of France?")]
    as_parts = chat_client.chat.completions.create(
        model=base_name, messages=[{"role": "user", "content": parts}], **GREEDY
    )
    as_text = chat_client.chat.completions.create(
        model=base_name,
        messages=[{"role": "user", "content": "What is the capital\nof France?"}],
        **GREEDY,
    )
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content


def test_chat_max_completion_tokens_wins(chat_client: openai.OpenAI, base_name: str) -> None:
    response = chat_client.chat.completions.create(
        model=base_name, messages=MESSAGES, max_completion_tokens=3, **GREEDY
    )
    assert response.usage is not None
    assert response.usage.completion_tokens == 3


def test_chat_adapter_differs_from_base(
    chat_client: openai.OpenAI, base_name: str, tiny_adapter_name: str
) -> None:
    base = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    tuned = chat_client.chat.completions.create(
        model=tiny_adapter_name, messages=MESSAGES, **GREEDY
    )
    assert tuned.model == tiny_adapter_name
    assert tuned.choices[0].message.content != base.choices[0].message.content


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"n": 0}, "n"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages",
        ),
        ({"extra_body": {"adapters": []}}, "adapters"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_chat_invalid_parameters_are_400(
    chat_client: openai.OpenAI, base_name: str, kwargs: dict, param: str, stream: bool
) -> None:
    kwargs = {"messages": MESSAGES, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        chat_client.chat.completions.create(model=base_name, stream=stream, **kwargs)
    assert exc.value.status_code == 400
    assert exc.value.param == param
    assert exc.value.type == "invalid_request_error"


def test_chat_unknown_model_is_404(chat_client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        chat_client.chat.completions.create(model="nope", messages=MESSAGES, max_tokens=2)
    assert exc.value.code == "model_not_found"


def test_chat_without_a_template_is_400(live_server: str, base_name: str) -> None:
    plain = openai.OpenAI(base_url=f"{live_server}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        plain.chat.completions.create(model=base_name, messages=MESSAGES, max_tokens=2)
    assert exc.value.code == "chat_template_missing"
    assert "chat template" in exc.value.message
    assert "/v1/completions" in exc.value.message


def test_chat_adapters_mix_matches_completions(
    chat_client: openai.OpenAI, base_name: str, tiny_adapter_name: str, chat_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    mix = {"adapters": [{"name": tiny_adapter_name, "weight": 0.5}], "ignore_eos": True}
    kwargs = {"temperature": 0.0, "max_tokens": 8, "extra_body": mix}
    chat = chat_client.chat.completions.create(model=base_name, messages=MESSAGES, **kwargs)
    completion = chat_client.completions.create(model=base_name, prompt=text, **kwargs)
    assert chat.choices[0].message.content == completion.choices[0].text
