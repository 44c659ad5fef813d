"""End to end on ``/v1/completions`` (real uvicorn server, tiny random Llama, real ``openai``
client and raw ``httpx``): streamed completions and their SSE wire format, client disconnects
that abort the request, and engine failures before, during and without a stream."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from adapter_files import sse_events
from completion_helpers import GREEDY, PROMPT, metric
from controlled_engine import controlled_engine

from loraplex.config import Config


def _aborts(url: str) -> float:
    return metric(url, "loraplex_requests_total", 'finish_reason="abort"')


def _wait_until_aborted(url: str, aborts_before: float, within: float) -> None:
    """Within ``within`` s: one more abort in /metrics, and then the request aborted in the engine
    too: nothing keeps running (or holding KV blocks) for it."""
    deadline = time.monotonic() + within
    while _aborts(url) == aborts_before:
        assert time.monotonic() < deadline, "the disconnected request was not aborted"
        time.sleep(0.05)
    while metric(url, "loraplex_num_requests_running") != 0:
        assert time.monotonic() < deadline, "the aborted request is still running"
        time.sleep(0.05)


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


@pytest.fixture(scope="module")
def faulty_server(server_factory: Callable[..., str], tiny_config: Config) -> tuple[str, dict]:
    """A server whose real engine can be slowed down (``knobs["delay"]`` seconds per step) or
    made to fail every step (``knobs["fail"]``), and those knobs."""
    engine, knobs = controlled_engine(tiny_config)
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


def test_health_is_503_when_the_engine_stopped(
    server_factory: Callable[..., str], tiny_config: Config
) -> None:
    from loraplex.engine.async_engine import AsyncEngine

    engine = AsyncEngine.from_config(tiny_config)
    # Start-up's objects left the collector's reach (no full collection walks the model).
    assert gc.get_freeze_count() > 10_000
    url = server_factory(tiny_config, engine)
    assert httpx.get(f"{url}/health").status_code == 200
    engine.shutdown()
    response = httpx.get(f"{url}/health")
    assert response.status_code == 503
    assert response.json() == {"status": "unhealthy"}


def test_streams_reset_before_their_first_token_are_never_prefilled(
    live_server: str, base_name: str
) -> None:
    """Issue 10 (12): a client that resets its stream while the request still waits in the
    queue aborts it there; it is never prefilled. A blocker fills every batch slot (n=16 of
    the tiny config's max_num_seqs) so that the 20 streams behind it must wait."""
    import json
    import socket
    import struct
    import threading

    blocker_body = {"model": base_name, "prompt": PROMPT, "n": 16, "max_tokens": 200,
                    "ignore_eos": True}  # fmt: skip
    blocker = threading.Thread(
        target=httpx.post,
        args=(f"{live_server}/v1/completions",),
        kwargs={"json": blocker_body, "timeout": 120},
    )
    blocker.start()
    deadline = time.monotonic() + 30
    while metric(live_server, "loraplex_num_requests_running") < 16:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    host, port = live_server.removeprefix("http://").split(":")
    payload = json.dumps({"model": base_name, "prompt": PROMPT, "stream": True, "max_tokens": 4})
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n{payload}"
    ).encode()
    sockets = []
    for _ in range(20):
        sock = socket.create_connection((host, int(port)))
        sock.sendall(request)
        sockets.append(sock)
    while metric(live_server, "loraplex_num_requests_waiting") < 20:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for sock in sockets:  # RST, as a client that dies does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    while metric(live_server, "loraplex_num_requests_waiting") > 0:
        assert time.monotonic() < deadline, "reset streams are still queued"
        time.sleep(0.02)
    assert metric(live_server, "loraplex_num_requests_running") == 16  # the blocker still runs
    blocker.join(120)
