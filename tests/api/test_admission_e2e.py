"""Admission through a real uvicorn server: 429s with Retry-After past --max-queued-requests
(zero 5xx, no admitted request lost), the openai client's retries ending up served, a flooding
tenant next to one that keeps being served, every 429 counted once by tenant (the tokenizer
pool's too) and logged, and an engine fault.

The engine is the real one, slowed by a delay per step (so a queue forms on a fast model).
Tenants come from real API keys: ``key-<tenant>`` acts for ``<tenant>``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from completion_helpers import PROMPT, metric
from controlled_engine import controlled_engine

from loraplex.api_keys import ApiKeyEntry, key_digest
from loraplex.config import Config, SchedulerConfig

RUNNING, QUEUED = 2, 4  # --max-num-seqs, --max-queued-requests
STEP_DELAY = 0.02
MAX_TOKENS = 6
TENANTS = ("default", "t0", "t1", "t2", "t3", "flood", "quiet", "acme", "globex")
SCRAPE_KEY = "key-prometheus"


def key(tenant: str) -> str:
    return f"key-{tenant}"


def slowed_server(config: Config, servers: list) -> tuple[str, dict]:
    """A server on the real engine slowed by STEP_DELAY; ``knobs`` also holds the engine and
    the app (``knobs["app"].state``: what its lifespan made)."""
    from loraplex.api.app import create_app
    from loraplex.api.threaded_server import ThreadedServer

    keys = tuple(ApiKeyEntry(key_digest(key(t)), t, "inference") for t in TENANTS)
    keys += (ApiKeyEntry(key_digest(SCRAPE_KEY), "ops", "metrics"),)  # reads tenants plain
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, api_keys=keys))
    engine, knobs = controlled_engine(config, STEP_DELAY)
    knobs["engine"] = engine
    knobs["app"] = create_app(config, engine)
    server = ThreadedServer(knobs["app"])
    servers.append(server)
    return server.start(), knobs


@pytest.fixture(scope="module")
def servers() -> Iterator[list]:
    started: list = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def queued_server(servers: list, tiny_config: Config) -> tuple[str, dict]:
    scheduler = SchedulerConfig(
        max_num_seqs=RUNNING,
        max_num_batched_tokens=256,
        max_queued_requests=QUEUED,
        max_queued_requests_per_tenant=2,
    )
    return slowed_server(dataclasses.replace(tiny_config, scheduler=scheduler), servers)


def post(url: str, tenant: str = "default", max_tokens: int = MAX_TOKENS) -> httpx.Response:
    body = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {key(tenant)}"}
    return httpx.post(f"{url}/v1/completions", json=body, headers=headers, timeout=60)


def test_twice_the_admissible_load_gets_429s_and_loses_nothing(
    queued_server: tuple[str, dict],
) -> None:
    url = queued_server[0]
    load = 2 * (RUNNING + QUEUED)
    # Spread over tenants so that only the total cap (4) applies, not the per-tenant one (2).
    tenants = [f"t{i % 4}" for i in range(load)]
    with ThreadPoolExecutor(load) as pool:
        responses = list(pool.map(lambda t: post(url, t), tenants))
    statuses = Counter(r.status_code for r in responses)
    print(f"load {load}: statuses {dict(statuses)}")
    assert set(statuses) <= {200, 429}, statuses  # zero 5xx, nothing else
    # A burst arrives before any step: the first QUEUED are admitted, the rest refused.
    assert statuses[429] > 0 and statuses[200] >= QUEUED
    for r in responses:
        if r.status_code == 429:
            error = r.json()["error"]
            assert error["code"] == "rate_limit_exceeded"
            assert error["type"] == "rate_limit_error"
            assert 1 <= int(r.headers["retry-after"]) <= 60
        else:  # every admitted request ran to its end
            usage = r.json()["usage"]
            assert usage["completion_tokens"] == MAX_TOKENS
            assert r.json()["choices"][0]["finish_reason"] == "length"
    engine = queued_server[1]["engine"]
    assert engine.queue_limits.queued == 0 and engine.num_in_flight == 0


def test_the_openai_client_retries_429s_until_served(queued_server: tuple[str, dict]) -> None:
    url = queued_server[0]
    clients = [
        openai.OpenAI(base_url=f"{url}/v1", api_key=key(f"t{i}"), max_retries=8, timeout=60)
        for i in range(4)
    ]
    load = 2 * (RUNNING + QUEUED)

    def one(i: int) -> openai.types.Completion:
        return clients[i % 4].completions.create(
            model="tiny-llama",
            prompt=PROMPT,
            max_tokens=MAX_TOKENS,
            extra_body={"ignore_eos": True},
        )

    start = time.monotonic()
    rejected = queued_server[1]["engine"].queue_limits.rejected
    before = sum(rejected.values())
    with ThreadPoolExecutor(load) as pool:
        completions = list(pool.map(one, range(load)))
    took = time.monotonic() - start
    retried = sum(rejected.values()) - before
    print(f"openai client: {load} requests, {retried} 429s retried, all served in {took:.1f} s")
    assert all(c.usage.completion_tokens == MAX_TOKENS for c in completions)
    assert retried > 0  # some were refused first, and the client's retries got them served


def test_a_flooding_tenant_gets_429s_while_another_is_served(
    queued_server: tuple[str, dict],
) -> None:
    url = queued_server[0]
    quiet: list[httpx.Response] = []
    with ThreadPoolExecutor(12) as pool:
        flood = [pool.submit(post, url, "flood", 12) for _ in range(10)]
        time.sleep(0.1)  # the flood is queued
        for _ in range(3):
            quiet.append(post(url, "quiet"))
        flooded = Counter(f.result().status_code for f in flood)
    print(f"flooding tenant: {dict(flooded)}; quiet tenant: {[r.status_code for r in quiet]}")
    assert [r.status_code for r in quiet] == [200, 200, 200]
    assert flooded[429] > 0 and set(flooded) <= {200, 429}
    refusal = next(f.result() for f in flood if f.result().status_code == 429)
    assert "--max-queued-requests-per-tenant 2" in refusal.json()["error"]["message"]


def test_every_429_is_counted_once_by_tenant_and_logged(
    servers: list, tiny_config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """Both refusals, the tokenizer pool's (its cap of queued prompts) and the queue's, reach
    loraplex_rate_limited_requests_total exactly as often as the clients saw them, per tenant."""
    one_thread = dataclasses.replace(tiny_config.server, tokenizer_threads=1)
    scheduler = dataclasses.replace(
        tiny_config.scheduler, max_queued_requests=QUEUED, max_queued_requests_per_tenant=2
    )
    config = dataclasses.replace(tiny_config, server=one_thread, scheduler=scheduler)
    url, knobs = slowed_server(config, servers)
    pool = knobs["app"].state.text_pool
    tenants = ["acme", "globex"]
    name = "loraplex_rate_limited_requests_total"
    before = {t: metric(url, name, f'tenant="{t}"', SCRAPE_KEY) for t in tenants}
    load = pool.max_pending + 12
    gate = threading.Event()
    pool._executor.submit(gate.wait)  # its one thread is busy: prompts queue up in the pool
    caplog.set_level(logging.INFO, logger="loraplex.api.errors")
    with ThreadPoolExecutor(load) as clients:
        futures = [clients.submit(post, url, tenants[i % 2]) for i in range(load)]
        deadline = time.monotonic() + 20
        while sum(f.done() for f in futures) < load - pool.max_pending:  # the pool's refusals
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gate.set()  # the queued prompts go on to the engine's queue caps
        responses = [f.result() for f in futures]
    seen = Counter(tenants[i % 2] for i, r in enumerate(responses) if r.status_code == 429)
    messages = [r.json()["error"]["message"] for r in responses if r.status_code == 429]
    print(f"429s by tenant: {dict(seen)}; {len(messages)} in all")
    assert {r.status_code for r in responses} <= {200, 429}
    assert any("tokenizing" in m for m in messages) and any("retry later" in m for m in messages)
    assert any("--max-queued-requests" in m for m in messages)
    assert {t: metric(url, name, f'tenant="{t}"', SCRAPE_KEY) - before[t] for t in tenants} == {
        t: float(seen[t]) for t in tenants
    }
    logged = [r.getMessage() for r in caplog.records if " failed: 429 " in r.getMessage()]
    assert len(logged) == len(messages)  # one line each, with the reason
    assert sorted(line.split(" failed: 429 ")[1] for line in logged) == sorted(messages)


def test_a_failing_step_is_a_500_and_health_stays_true(queued_server: tuple[str, dict]) -> None:
    url, knobs = queued_server
    knobs["fail"] = True
    try:
        response = post(url)
    finally:
        knobs["fail"] = False
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    # The loop survives a failed step and keeps stepping: alive, and serving again.
    assert httpx.get(f"{url}/health").status_code == 200
    assert post(url).status_code == 200


def test_a_dead_engine_thread_fails_its_requests_and_health(
    servers: list, tiny_config: Config
) -> None:
    url, knobs = slowed_server(tiny_config, servers)
    engine = knobs["engine"]
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, url, "default", 200)
        deadline = time.monotonic() + 30
        while not engine.num_in_flight:
            assert time.monotonic() < deadline
            time.sleep(0.01)

        def broken() -> bool:  # a bug outside the step (in the loop itself)
            raise RuntimeError("injected loop failure")

        engine.engine.has_unfinished = broken
        response = running.result(timeout=30)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"
    assert httpx.get(f"{url}/health").status_code == 503
    assert httpx.get(f"{url}/ready").status_code == 503
    refused = post(url)
    assert refused.status_code == 503 and "not running" in refused.json()["error"]["message"]


def test_a_hung_step_turns_health_503_until_it_steps_again(
    servers: list, tiny_config: Config
) -> None:
    url, knobs = slowed_server(tiny_config, servers)
    engine = knobs["engine"]
    engine.stall_s = 1.0  # the idle loop comes round every 0.5 s
    assert httpx.get(f"{url}/health").status_code == 200
    knobs["delay"] = 3.0  # one step that takes 3 s: a hang, as far as a probe can tell
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(post, url, "default", 1)
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/health").status_code == 200:
            assert time.monotonic() < deadline, "/health stayed 200 while nothing stepped"
            time.sleep(0.1)
        knobs["delay"] = 0.0
        assert running.result(timeout=30).status_code == 200
    assert httpx.get(f"{url}/health").status_code == 200
