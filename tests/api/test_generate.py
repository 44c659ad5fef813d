"""End to end: the TGI/LoRAX-style ``/generate`` and ``/generate_stream`` with raw ``httpx``, on
a real uvicorn server (``chat_url``: tests/api/conftest.py), checked against the OpenAI routes.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from adapter_files import sse_events
from completion_helpers import PROMPT

from loraplex.config import Config


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


# ---- /generate and /generate_stream -----------------------------------------------------


@pytest.mark.parametrize("adapter", [None, "tiny-a"])
def test_generate_equals_greedy_completion(
    chat_client: openai.OpenAI, chat_url: str, base_name: str, adapter: str | None
) -> None:
    response = _generate(chat_url, adapter_id=adapter, max_new_tokens=8, details=True)
    assert response.status_code == 200, response.text
    out = response.json()
    completion = chat_client.completions.create(
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


def test_decoder_input_details_equal_echoed_prompt_logprobs(
    chat_client: openai.OpenAI, chat_url: str, base_name: str
) -> None:
    details = _generate(chat_url, max_new_tokens=2, details=True, decoder_input_details=True)
    prefill = details.json()["details"]["prefill"]
    response = chat_client.completions.create(
        model=base_name, prompt=PROMPT, max_tokens=2, logprobs=0, echo=True, temperature=0
    )
    echoed = response.choices[0]
    assert len(prefill) == response.usage.prompt_tokens > 1
    assert [t["text"] for t in prefill] == echoed.logprobs.tokens[: len(prefill)]
    assert prefill[0]["logprob"] is None
    expected = echoed.logprobs.token_logprobs[1 : len(prefill)]
    assert [t["logprob"] for t in prefill[1:]] == pytest.approx(expected, abs=1e-5)
    assert _generate(chat_url, max_new_tokens=2, details=True).json()["details"]["prefill"] == []


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
    chat_client: openai.OpenAI, chat_url: str, base_name: str, tiny_adapter_name: str
) -> None:
    merged = {"ids": [tiny_adapter_name], "weights": [0.5], "merge_strategy": "linear"}
    response = _generate(chat_url, merged_adapters=merged, max_new_tokens=8)
    assert response.status_code == 200, response.text
    completion = chat_client.completions.create(
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
