"""End to end: a real uvicorn server on the tiny random Llama, called with the real ``openai``
client (and raw ``httpx`` where the wire format itself is the point)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from adapter_files import sse_events

from loraplex.config import Config

PROMPT = "The capital of France is"
# ignore_eos: a random model may emit EOS at any step; with it every completion has exactly
# max_tokens tokens, so texts and usage are comparable.
GREEDY = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}


@pytest.fixture(scope="module")
def client(live_server: str) -> openai.OpenAI:
    # max_retries=0: a failure must surface at once, not after the SDK's back-off.
    return openai.OpenAI(base_url=f"{live_server}/v1", api_key="x", max_retries=0, timeout=120)


def _metric(url: str, name: str, labels: str = "") -> float:
    """One sample's value from /metrics (0 if absent); ``labels`` as in the text format."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


def _aborts(url: str) -> float:
    return _metric(url, "loraplex_requests_total", 'finish_reason="abort"')


def _wait_until_aborted(url: str, aborts_before: float, within: float) -> None:
    """Within ``within`` s: one more abort in /metrics, and then the request aborted in the engine
    too: nothing keeps running (or holding KV blocks) for it."""
    deadline = time.monotonic() + within
    while _aborts(url) == aborts_before:
        assert time.monotonic() < deadline, "the disconnected request was not aborted"
        time.sleep(0.05)
    while _metric(url, "loraplex_num_requests_running") != 0:
        assert time.monotonic() < deadline, "the aborted request is still running"
        time.sleep(0.05)


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


def test_stream_concatenates_to_the_greedy_text(client: openai.OpenAI, base_name: str) -> None:
    expected = client.completions.create(model=base_name, prompt=PROMPT, **GREEDY)
    chunks = list(client.completions.create(model=base_name, prompt=PROMPT, stream=True, **GREEDY))
    assert len(chunks) > 1
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].text for c in chunks) == expected.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_stream_include_usage_ends_with_a_usage_chunk(
    client: openai.OpenAI, base_name: str
) -> None:
    chunks = list(
        client.completions.create(
            model=base_name,
            prompt=PROMPT,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


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
        ({"echo": True}, "echo"),
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


def test_streamed_list_of_prompts(client: openai.OpenAI, base_name: str) -> None:
    prompts = [PROMPT, "Hello world!"]
    batch = client.completions.create(model=base_name, prompt=prompts, **GREEDY)
    texts = ["", ""]
    finished = [None, None]
    for chunk in client.completions.create(model=base_name, prompt=prompts, stream=True, **GREEDY):
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            finished[choice.index] = choice.finish_reason or finished[choice.index]
    assert texts == [c.text for c in batch.choices]
    assert finished == ["length", "length"]


def test_sse_wire_format(live_server: str, base_name: str) -> None:
    body = {"model": base_name, "prompt": PROMPT, "stream": True, "max_tokens": 4}
    response = httpx.post(f"{live_server}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks and all(c["object"] == "text_completion" for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert set(chunks[0]["choices"][0]) == {"index", "text", "finish_reason", "logprobs"}


def test_error_before_first_byte_is_json(live_server: str, base_name: str) -> None:
    body = {"model": base_name, "prompt": PROMPT, "stream": True, "temperature": 9}
    response = httpx.post(f"{live_server}/v1/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["param"] == "temperature"


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


def test_client_disconnect_aborts_the_request(live_server: str, base_name: str) -> None:
    aborted = _aborts(live_server)
    body = {
        "model": base_name,
        "prompt": PROMPT,
        "stream": True,
        "max_tokens": 200,
        "ignore_eos": True,
    }
    with httpx.stream("POST", f"{live_server}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk arrived: the request is running
    _wait_until_aborted(live_server, aborted, within=30)


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
    assert _metric(live_server, "loraplex_generation_tokens_total") >= 8
    assert _metric(live_server, "loraplex_step_duration_seconds_count") >= 8


def test_api_key_guards_v1_only(
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
    assert httpx.get(f"{url}/health").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200


@pytest.fixture(scope="module")
def faulty_server(server_factory: Callable[..., str], tiny_config: Config) -> tuple[str, dict]:
    """A server whose real engine can be slowed down (``knobs["delay"]`` seconds per step) or
    made to fail every step (``knobs["fail"]``), and those knobs."""
    from loraplex.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(tiny_config)
    knobs: dict = {"delay": 0.0, "fail": False}
    step = engine.engine.step

    def controlled_step():  # runs in the engine thread
        time.sleep(knobs["delay"])
        if knobs["fail"]:
            raise RuntimeError("injected failure in /secret/path")
        return step()

    engine.engine.step = controlled_step
    return server_factory(tiny_config, engine), knobs


@pytest.fixture
def knobs(faulty_server: tuple[str, dict]) -> Iterator[dict]:
    yield faulty_server[1]
    faulty_server[1].update(delay=0.0, fail=False)


def test_error_mid_stream_is_an_sse_error_event(
    faulty_server: tuple[str, dict], knobs: dict, base_name: str
) -> None:
    url = faulty_server[0]
    knobs["delay"] = 0.02
    body = {"model": base_name, "prompt": PROMPT, "stream": True, "max_tokens": 100}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: {")
        knobs["fail"] = True
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    error = json.loads(rest[-2][len("data: ") :])
    assert error == {
        "error": {
            "message": "Internal server error",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }


def test_error_mid_stream_raises_in_the_openai_client(
    faulty_server: tuple[str, dict], knobs: dict, base_name: str
) -> None:
    client = openai.OpenAI(base_url=f"{faulty_server[0]}/v1", api_key="x", max_retries=0)
    knobs["delay"] = 0.02
    stream = client.completions.create(model=base_name, prompt=PROMPT, stream=True, max_tokens=100)
    next(iter(stream))
    knobs["fail"] = True
    with pytest.raises(openai.APIError, match="Internal server error"):
        list(stream)


def test_engine_failure_without_stream_is_500(
    faulty_server: tuple[str, dict], knobs: dict, base_name: str
) -> None:
    knobs["fail"] = True
    body = {"model": base_name, "prompt": PROMPT, "max_tokens": 4}
    response = httpx.post(f"{faulty_server[0]}/v1/completions", json=body, timeout=60)
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "secret" not in response.text


def test_non_streamed_client_disconnect_aborts(
    faulty_server: tuple[str, dict], knobs: dict, base_name: str
) -> None:
    url = faulty_server[0]
    knobs["delay"] = 0.02  # 200 tokens take 4 s; the client gives up after 0.5 s
    aborted = _aborts(url)
    body = {"model": base_name, "prompt": PROMPT, "max_tokens": 200, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
    # 3 s: well before the request could have finished by itself.
    _wait_until_aborted(url, aborted, within=3)


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


def test_health_is_503_when_the_engine_stopped(
    server_factory: Callable[..., str], tiny_config: Config
) -> None:
    from loraplex.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(tiny_config)
    url = server_factory(tiny_config, engine)
    assert httpx.get(f"{url}/health").status_code == 200
    engine.shutdown()
    response = httpx.get(f"{url}/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy"}


def test_a_repeated_long_prompt_reports_cached_tokens_and_the_same_text(
    client: openai.OpenAI, base_name: str, live_server: str, tiny_config: Config
) -> None:
    prompt = "A long shared system prompt, repeated word for word by every request. " * 4
    hits_before = _metric(live_server, "loraplex_prefix_cache_hit_tokens_total")
    first = client.completions.create(model=base_name, prompt=prompt, **GREEDY)
    again = client.completions.create(model=base_name, prompt=prompt, **GREEDY)
    assert again.choices[0].text == first.choices[0].text
    assert first.usage is not None and again.usage is not None
    cached = again.usage.prompt_tokens_details.cached_tokens
    # Every full block but the one holding the last prompt token, which is recomputed.
    assert 0 < cached < again.usage.prompt_tokens
    assert cached % tiny_config.cache.block_size == 0
    assert _metric(live_server, "loraplex_prefix_cache_hit_tokens_total") >= hits_before + cached
