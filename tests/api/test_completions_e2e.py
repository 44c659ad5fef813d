"""End to end: a real uvicorn server on the tiny random Llama, called with the real ``openai``
client (and raw ``httpx`` where the wire format itself is the point): models, non-streamed
completions, request errors, health, metrics and the API key. Streaming, client disconnects and
engine failures are in ``test_completions_streams_and_aborts.py``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import httpx
import openai
import pytest
from completion_helpers import GREEDY, PROMPT, metric

from loraplex.config import Config


def test_models_lists_base_first_then_adapters(
    client: openai.OpenAI, base_name: str, tiny_adapter_name: str
) -> None:
    cards = [m.to_dict() for m in client.models.list().data]
    assert [c["id"] for c in cards] == [base_name, tiny_adapter_name]
    base, adapter = cards
    assert base["object"] == "model"
    assert base["owned_by"] == "loraplex"
    assert base["parent"] is None
    assert adapter["parent"] == base_name
    assert adapter["root"] == base_name
    assert isinstance(base["created"], int)


def test_completion_non_streamed(client: openai.OpenAI, base_name: str, live_server: str) -> None:
    response = client.completions.create(model=base_name, prompt=PROMPT, **GREEDY)
    assert response.id.startswith("cmpl-")
    assert response.object == "text_completion"
    assert response.model == base_name
    [choice] = response.choices
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert isinstance(choice.text, str)
    assert choice.text
    usage = response.usage
    assert usage is not None
    assert usage.completion_tokens == 8
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_adapter_completion_differs_from_base(
    client: openai.OpenAI, base_name: str, tiny_adapter_name: str
) -> None:
    base = client.completions.create(model=base_name, prompt=PROMPT, **GREEDY)
    tuned = client.completions.create(model=tiny_adapter_name, prompt=PROMPT, **GREEDY)
    assert tuned.model == tiny_adapter_name
    assert tuned.usage is not None
    assert tuned.usage.completion_tokens == 8
    # The adapter's B is random, not zero: its update dominates the tiny model's small weights.
    assert tuned.choices[0].text != base.choices[0].text


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.completions.create(model="no-such-model", prompt=PROMPT, max_tokens=2)
    assert exc.value.status_code == 404
    assert exc.value.code == "model_not_found"
    assert exc.value.param == "model"


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 65}, "n"),
        ({"top_p": 0}, "top_p"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": -1}, "logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"extra_body": {"top_k": "many"}}, "top_k"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_invalid_parameters_are_400_with_param(
    client: openai.OpenAI, base_name: str, kwargs: dict, param: str, stream: bool
) -> None:
    kwargs = {"prompt": PROMPT, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=base_name, stream=stream, **kwargs)
    assert exc.value.status_code == 400
    assert exc.value.param == param
    assert exc.value.type == "invalid_request_error"


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_too_long_is_400(
    client: openai.OpenAI, base_name: str, tiny_config: Config, stream: bool
) -> None:
    too_long = [5] * (tiny_config.model.max_model_len + 1)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=base_name, prompt=too_long, max_tokens=4, stream=stream)
    assert exc.value.param == "prompt"
    # A prompt that fits, but not with its max_tokens, blames max_tokens.
    fits = [5] * (tiny_config.model.max_model_len - 2)
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model=base_name, prompt=fits, max_tokens=4, stream=stream)
    assert exc.value.param == "max_tokens"


def test_list_of_prompts_gives_one_choice_each(client: openai.OpenAI, base_name: str) -> None:
    prompts = [PROMPT, "Hello world!", "LoRA adds"]
    singles = [client.completions.create(model=base_name, prompt=p, **GREEDY) for p in prompts]
    batch = client.completions.create(model=base_name, prompt=prompts, **GREEDY)
    assert [c.index for c in batch.choices] == [0, 1, 2]
    # Run concurrently in one batch, each prompt still gets its own greedy continuation.
    assert [c.text for c in batch.choices] == [s.choices[0].text for s in singles]
    assert batch.usage is not None
    assert batch.usage.completion_tokens == 3 * 8
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles if s.usage)


def test_token_id_prompts_match_text_prompts(
    client: openai.OpenAI, base_name: str, live_server: str
) -> None:
    text = client.completions.create(model=base_name, prompt=PROMPT, **GREEDY)
    assert text.usage is not None
    ids = [5, 17, 42]
    by_ids = client.completions.create(model=base_name, prompt=ids, **GREEDY)
    nested = client.completions.create(model=base_name, prompt=[ids, ids], **GREEDY)
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == 3
    assert [c.text for c in nested.choices] == [by_ids.choices[0].text] * 2


def test_raw_error_shapes(live_server: str, base_name: str) -> None:
    url = f"{live_server}/v1/completions"
    missing = httpx.post(url, json={"model": base_name}, timeout=60)
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "prompt"
    not_json = httpx.post(url, content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400
    assert set(not_json.json()["error"]) == {"message", "type", "param", "code"}
    unknown = httpx.get(f"{live_server}/v1/nothing-here")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    wrong_method = httpx.get(url)
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["message"] == "Method Not Allowed"


def test_extra_fields_are_ignored(live_server: str, base_name: str) -> None:
    body = {"model": base_name, "prompt": PROMPT, "max_tokens": 2, "best_of": 1, "foo": [1]}
    response = httpx.post(f"{live_server}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text


def test_health(live_server: str) -> None:
    response = httpx.get(f"{live_server}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_metrics_after_a_request(client: openai.OpenAI, base_name: str, live_server: str) -> None:
    client.completions.create(model=base_name, prompt=PROMPT, **GREEDY)
    response = httpx.get(f"{live_server}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        'loraplex_requests_total{finish_reason="length"}',
        "loraplex_prompt_tokens_total",
        "loraplex_generation_tokens_total",
        "loraplex_time_to_first_token_seconds_count",
        "loraplex_e2e_request_latency_seconds_count",
        "loraplex_step_duration_seconds_count",
        "loraplex_num_requests_running",
        "loraplex_kv_cache_usage_ratio",
    ):
        assert name in text, name
    assert metric(live_server, "loraplex_generation_tokens_total") >= 8
    assert metric(live_server, "loraplex_step_duration_seconds_count") >= 8


def test_api_key_guards_every_route_but_health_and_metrics(
    server_factory: Callable[..., str], tiny_config: Config, base_name: str
) -> None:
    config = dataclasses.replace(
        tiny_config, server=dataclasses.replace(tiny_config.server, api_key="sekret")
    )
    url = server_factory(config)
    for key in ("wrong", "x"):
        anon = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as exc:
            anon.models.list()
        assert exc.value.code == "invalid_api_key"
    missing = httpx.post(f"{url}/v1/completions", json={"model": base_name, "prompt": "a"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    authed = openai.OpenAI(base_url=f"{url}/v1", api_key="sekret", max_retries=0)
    assert authed.models.list().data[0].id == base_name
    assert authed.completions.create(model=base_name, prompt=PROMPT, max_tokens=2).choices
    # x-api-key is the other header a key may come in (gateways that keep Authorization).
    assert httpx.get(f"{url}/v1/models", headers={"x-api-key": "sekret"}).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"x-api-key": "wrong"}).status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200


def test_concurrent_requests_share_the_server(client: openai.OpenAI, base_name: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = [PROMPT, "Hello world!", "LoRA adds", "Many adapters"]
    sequential = [client.completions.create(model=base_name, prompt=p, **GREEDY) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        parallel = list(
            pool.map(
                lambda p: client.completions.create(model=base_name, prompt=p, **GREEDY), prompts
            )
        )
    assert [r.choices[0].text for r in parallel] == [r.choices[0].text for r in sequential]


def test_a_repeated_long_prompt_reports_cached_tokens_and_the_same_text(
    client: openai.OpenAI, base_name: str, live_server: str, tiny_config: Config
) -> None:
    prompt = "A long shared system prompt, repeated word for word by every request. " * 4
    hits_before = metric(live_server, "loraplex_prefix_cache_hit_tokens_total")
    first = client.completions.create(model=base_name, prompt=prompt, **GREEDY)
    again = client.completions.create(model=base_name, prompt=prompt, **GREEDY)
    assert again.choices[0].text == first.choices[0].text
    assert first.usage is not None and again.usage is not None
    cached = again.usage.prompt_tokens_details.cached_tokens
    # Every full block but the one holding the last prompt token, which is recomputed.
    assert 0 < cached < again.usage.prompt_tokens
    assert cached % tiny_config.cache.block_size == 0
    assert metric(live_server, "loraplex_prefix_cache_hit_tokens_total") >= hits_before + cached


def test_a_cache_salt_keeps_tenants_prefixes_apart(client: openai.OpenAI, base_name: str) -> None:
    prompt = "Tenant-private context that another tenant must not be able to probe. " * 4

    def cached(salt: str) -> int:
        body = {"ignore_eos": True, "cache_salt": salt}
        response = client.completions.create(
            model=base_name, prompt=prompt, temperature=0.0, max_tokens=2, extra_body=body
        )
        assert response.usage is not None
        return response.usage.prompt_tokens_details.cached_tokens

    assert cached("tenant-a") == 0
    assert cached("tenant-b") == 0  # the same prompt under another salt is not a hit
    assert cached("tenant-a") > 0
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(
            model=base_name, prompt=prompt, max_tokens=2, extra_body={"cache_salt": ""}
        )
    assert exc.value.param == "cache_salt"
