"""End to end: ``/v1/chat/completions`` with the real ``openai`` client, and the TGI/LoRAX-style
``/generate`` and ``/generate_stream`` with raw ``httpx``, on a real uvicorn server.

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

from loraplex.config import Config

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]
PROMPT = "The capital of France is"
# ignore_eos: a random model may emit EOS at any step; with it every reply has max_tokens tokens.
GREEDY = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(chat_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{chat_url}/v1", api_key="x", max_retries=0, timeout=120)


def _generate(url: str, inputs: str = PROMPT, **parameters: object) -> httpx.Response:
    return httpx.post(
        f"{url}/generate", json={"inputs": inputs, "parameters": parameters}, timeout=120
    )


def _generate_stream(url: str, inputs: str = PROMPT, **parameters: object) -> list[dict]:
    body = {"inputs": inputs, "parameters": parameters}
    response = httpx.post(f"{url}/generate_stream", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(e) for e in sse_events(response)]


# ---- /v1/chat/completions -----------------------------------------------------------------


def test_chat_non_streamed(client: openai.OpenAI, base_name: str, chat_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    response = client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
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
    client: openai.OpenAI, base_name: str, chat_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chat = client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    completion = client.completions.create(model=base_name, prompt=ids, **GREEDY)
    assert chat.choices[0].message.content == completion.choices[0].text


def test_chat_stream_equals_non_stream(client: openai.OpenAI, base_name: str) -> None:
    whole = client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    stream = client.chat.completions.create(
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


def test_chat_text_parts_equal_a_string(client: openai.OpenAI, base_name: str) -> None:
    parts = [{"type": "text", "text": t} for t in ("What is the capital", "of France?")]
    as_parts = client.chat.completions.create(
        model=base_name, messages=[{"role": "user", "content": parts}], **GREEDY
    )
    as_text = client.chat.completions.create(
        model=base_name,
        messages=[{"role": "user", "content": "What is the capital\nof France?"}],
        **GREEDY,
    )
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content


def test_chat_max_completion_tokens_wins(client: openai.OpenAI, base_name: str) -> None:
    response = client.chat.completions.create(
        model=base_name, messages=MESSAGES, max_completion_tokens=3, **GREEDY
    )
    assert response.usage is not None
    assert response.usage.completion_tokens == 3


def test_chat_adapter_differs_from_base(
    client: openai.OpenAI, base_name: str, tiny_adapter_name: str
) -> None:
    base = client.chat.completions.create(model=base_name, messages=MESSAGES, **GREEDY)
    tuned = client.chat.completions.create(model=tiny_adapter_name, messages=MESSAGES, **GREEDY)
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
    client: openai.OpenAI, base_name: str, kwargs: dict, param: str, stream: bool
) -> None:
    kwargs = {"messages": MESSAGES, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=base_name, stream=stream, **kwargs)
    assert exc.value.status_code == 400
    assert exc.value.param == param
    assert exc.value.type == "invalid_request_error"


def test_chat_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=MESSAGES, max_tokens=2)
    assert exc.value.code == "model_not_found"


def test_chat_without_a_template_is_400(live_server: str, base_name: str) -> None:
    plain = openai.OpenAI(base_url=f"{live_server}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as exc:
        plain.chat.completions.create(model=base_name, messages=MESSAGES, max_tokens=2)
    assert exc.value.code == "chat_template_missing"
    assert "chat template" in exc.value.message
    assert "/v1/completions" in exc.value.message


def test_chat_adapters_mix_matches_completions(
    client: openai.OpenAI, base_name: str, tiny_adapter_name: str, chat_model_dir: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    mix = {"adapters": [{"name": tiny_adapter_name, "weight": 0.5}], "ignore_eos": True}
    kwargs = {"temperature": 0.0, "max_tokens": 8, "extra_body": mix}
    chat = client.chat.completions.create(model=base_name, messages=MESSAGES, **kwargs)
    completion = client.completions.create(model=base_name, prompt=text, **kwargs)
    assert chat.choices[0].message.content == completion.choices[0].text


# ---- /generate and /generate_stream -----------------------------------------------------


@pytest.mark.parametrize("adapter", [None, "tiny-a"])
def test_generate_equals_greedy_completion(
    client: openai.OpenAI, chat_url: str, base_name: str, adapter: str | None
) -> None:
    response = _generate(chat_url, adapter_id=adapter, max_new_tokens=8, details=True)
    assert response.status_code == 200, response.text
    out = response.json()
    completion = client.completions.create(
        model=adapter or base_name, prompt=PROMPT, temperature=0.0, max_tokens=8
    )
    assert out["generated_text"] == completion.choices[0].text
    details = out["details"]
    assert completion.usage is not None
    assert details["generated_tokens"] == completion.usage.completion_tokens
    assert details["input_length"] == completion.usage.prompt_tokens
    reason = {"length": "length", "stop": "eos_token"}[completion.choices[0].finish_reason]
    assert details["finish_reason"] == reason
    assert details["seed"] is None  # greedy
    assert len(details["tokens"]) == details["generated_tokens"]
    assert "".join(t["text"] for t in details["tokens"]) == out["generated_text"]


def test_generate_without_details(chat_url: str) -> None:
    response = _generate(chat_url, max_new_tokens=2)
    assert response.status_code == 200
    assert set(response.json()) == {"generated_text", "details"}
    assert response.json()["details"] is None


def test_generate_return_full_text(chat_url: str) -> None:
    plain = _generate(chat_url, max_new_tokens=4).json()["generated_text"]
    full = _generate(chat_url, max_new_tokens=4, return_full_text=True).json()["generated_text"]
    assert full == PROMPT + plain


def test_generate_stop_sequence(chat_url: str) -> None:
    text = _generate(chat_url, max_new_tokens=16).json()["generated_text"]
    starts = [i for i in range(len(text) // 2, len(text) - 1) if text[i : i + 2].strip()]
    assert starts, text
    stop = text[starts[0] : starts[0] + 2]
    out = _generate(chat_url, max_new_tokens=16, stop=[stop], details=True).json()
    assert out["generated_text"] == text[: text.index(stop)]
    assert out["details"]["finish_reason"] == "stop_sequence"


def test_generate_merged_adapters_equal_the_adapters_mix(
    client: openai.OpenAI, chat_url: str, base_name: str, tiny_adapter_name: str
) -> None:
    merged = {"ids": [tiny_adapter_name], "weights": [0.5], "merge_strategy": "linear"}
    response = _generate(chat_url, merged_adapters=merged, max_new_tokens=8)
    assert response.status_code == 200, response.text
    completion = client.completions.create(
        model=base_name,
        prompt=PROMPT,
        temperature=0.0,
        max_tokens=8,
        extra_body={"adapters": [{"name": tiny_adapter_name, "weight": 0.5}]},
    )
    assert response.json()["generated_text"] == completion.choices[0].text


def test_generate_sampling_is_seeded(chat_url: str) -> None:
    sampled = {"do_sample": True, "max_new_tokens": 8, "details": True}
    first = _generate(chat_url, **sampled).json()
    seed = first["details"]["seed"]
    assert isinstance(seed, int)  # drawn by the server, so that it can be reported
    again = _generate(chat_url, **sampled, seed=seed).json()
    assert again["generated_text"] == first["generated_text"]
    assert again["details"]["seed"] == seed


@pytest.mark.parametrize("adapter", [None, "tiny-a"])
def test_generate_stream_concatenates_to_generate(chat_url: str, adapter: str | None) -> None:
    params = {"adapter_id": adapter, "max_new_tokens": 8, "details": True}
    whole = _generate(chat_url, **params).json()
    events = _generate_stream(chat_url, **params)
    assert [e["index"] for e in events] == list(range(1, len(events) + 1))
    assert len(events) == whole["details"]["generated_tokens"]
    assert "".join(e["token"]["text"] for e in events) == whole["generated_text"]
    *middle, last = events
    assert all(e["generated_text"] is None and e["details"] is None for e in middle)
    assert last["generated_text"] == whole["generated_text"]
    assert last["token"]["id"] == whole["details"]["tokens"][-1]["id"]
    details = {k: whole["details"][k] for k in last["details"]}
    assert last["details"] == details
    assert all(set(e["token"]) == {"id", "text", "logprob", "special"} for e in events)


def test_generate_stream_without_details(chat_url: str) -> None:
    events = _generate_stream(chat_url, max_new_tokens=3)
    assert events[-1]["details"] is None
    assert events[-1]["generated_text"] is not None


@pytest.mark.parametrize(
    ("parameters", "status", "param"),
    [
        ({"adapter_id": "nope"}, 404, "adapter_id"),
        ({"merged_adapters": {"ids": ["nope"], "weights": [1.0]}}, 404, "merged_adapters"),
        (
            {"merged_adapters": {"ids": ["tiny-a"], "weights": [1.0], "merge_strategy": "ties"}},
            400,
            "merged_adapters",
        ),
        ({"merged_adapters": {"ids": ["tiny-a"], "weights": [1.0, 2.0]}}, 400, "merged_adapters"),
        (
            {"adapter_id": "tiny-a", "merged_adapters": {"ids": ["tiny-a"], "weights": [1.0]}},
            400,
            "adapter_id",
        ),
        ({"max_new_tokens": 0}, 400, "max_tokens"),
        ({"do_sample": True, "temperature": 9}, 400, "temperature"),
        ({"best_of": 2}, 400, "best_of"),
        ({"top_n_tokens": 21}, 400, "top_n_tokens"),
        ({"max_new_tokens": "many"}, 400, "parameters"),
    ],
)
@pytest.mark.parametrize("route", ["/generate", "/generate_stream"])
def test_generate_errors_use_the_one_error_shape(
    chat_url: str, parameters: dict, status: int, param: str, route: str
) -> None:
    body = {"inputs": PROMPT, "parameters": parameters}
    response = httpx.post(f"{chat_url}{route}", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    if status == 404:
        assert error["code"] == "model_not_found"


def test_generate_prompt_too_long_is_400(chat_url: str, tiny_config: Config) -> None:
    response = _generate(chat_url, "France " * tiny_config.model.max_model_len)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
