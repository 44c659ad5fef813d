"""Issue 24, item 6: a chat request is bounded by its number of messages (and content parts) and
by the least its template can render, before anything is rendered.

300,000 empty messages (10 MB, under the body cap) were validated into 300,000 objects and
rendered to 9M characters before the 400. Through a live keyed server with a chat template:
such requests from one tenant, in a loop, while ``/health`` and another tenant's completion are
timed against a baseline measured alone in the same test.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from tenant_world import KEYS, World, greedy, start_world, tenant_config
from victim_clock import measure

from loraplex.config import Config

BASELINE_S, ATTACK_S = 2.0, 3.0
EMPTY = [{"role": "user", "content": ""}] * 300_000
# What is left of the attack is parsing its 10 MB of JSON (0.1-0.3 s on the event loop, as
# for any body that size): it is measured against a control that sends the same bytes in a
# field that is ignored, to a request that ends in a 404. Unbounded, the attack took 10 s a
# request, and the victims' medians were 6-8 s where the control's are well under 1 s.
SLOWDOWN, SLACK_S = 2.0, 0.3


@pytest.fixture(scope="module")
def world(
    server_factory: Callable[[Config], str],
    tiny_config: Config,
    chat_model_dir: Path,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    model = dataclasses.replace(tiny_config.model, model=str(chat_model_dir))
    config = dataclasses.replace(tiny_config, model=model)
    root = tmp_path_factory.mktemp("chat-bounds")
    return start_world(
        server_factory, tenant_config(config, root, tiny_adapters_dir), tiny_adapters_dir
    )


def chat(world: World, messages: list | bytes, who: str = "acme-app") -> httpx.Response:
    """POST a chat of ``messages`` (or of a body already encoded) as ``who``."""
    body = messages
    if not isinstance(body, bytes):
        body = json.dumps({"model": "tiny-llama", "messages": messages, "max_tokens": 2}).encode()
    headers = {"Authorization": f"Bearer {KEYS[who]}", "Content-Type": "application/json"}
    url = f"{world.url}/v1/chat/completions"
    return httpx.post(url, content=body, headers=headers, timeout=120)


def assert_400(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages" and error["type"] == "invalid_request_error", error
    assert all(word in error["message"] for word in words), error["message"]


def flood(world: World, path: str, body: bytes, answers: list[tuple[int, float]]) -> Callable:
    """Post ``body`` to ``path`` as acme's inference key, back to back; ``answers``: (status,
    seconds) of each."""
    headers = {"Authorization": f"Bearer {KEYS['acme-app']}", "Content-Type": "application/json"}

    def attack(stop: threading.Event) -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                start = time.perf_counter()
                status = http.post(f"{world.url}{path}", content=body, headers=headers).status_code
                answers.append((status, time.perf_counter() - start))

    return attack


def median(answers: list[tuple[int, float]]) -> float:
    return statistics.median(seconds for _, seconds in answers)


def test_300k_empty_messages_cost_no_more_than_their_bytes(world: World) -> None:
    chat_body = json.dumps({"model": "tiny-llama", "messages": EMPTY}).encode()  # 10.5 MB
    control_body = json.dumps({"model": "nobody", "prompt": "hi", "padding": EMPTY}).encode()
    control, attack = [], []

    def victim() -> str:
        return greedy(world.url, "globex", "support")

    alone = measure(world.url, victim, BASELINE_S)
    padded = measure(
        world.url, victim, ATTACK_S, [flood(world, "/v1/completions", control_body, control)]
    )
    attacked = measure(
        world.url, victim, ATTACK_S, [flood(world, "/v1/chat/completions", chat_body, attack)]
    )
    print("\n" + alone.line("alone") + "\n" + padded.line("10 MB bodies (control)"))
    print(attacked.line("300,000 messages"))
    print(f"answers: control {len(control)}, median {median(control):.2f} s; "
          f"300,000 messages {len(attack)}, median {median(attack):.2f} s")  # fmt: skip
    assert {status for status, _ in control} == {404}
    assert {status for status, _ in attack} == {400}
    assert_400(chat(world, chat_body), "300000 messages", "--max-chat-messages")
    assert median(attack) < SLOWDOWN * median(control) + SLACK_S
    assert set(attacked.texts) == {world.texts["globex"]}
    assert attacked.health_median < SLOWDOWN * padded.health_median + SLACK_S
    assert attacked.completion_median < SLOWDOWN * padded.completion_median + SLACK_S


def test_content_parts_count_against_the_same_limit(world: World) -> None:
    parts = [{"type": "text", "text": ""}] * 3000
    assert_400(chat(world, [{"role": "user", "content": parts}]), "3000 content parts")


def test_what_cannot_render_into_the_context_is_refused_unrendered(world: World) -> None:
    """2,000 empty messages pass the count, but each renders at least ``user: \\n``: 14,000
    characters, over the context (256 tokens of at most ~13 characters)."""
    response = chat(world, [{"role": "user", "content": ""}] * 2000)
    assert_400(response, "render to at least 14000 characters", "context length of 256")
    assert greedy(world.url, "globex", "support") == world.texts["globex"]


@pytest.fixture(scope="module")
def four_messages_url(
    server_factory: Callable[[Config], str], tiny_config: Config, chat_model_dir: Path
) -> str:
    model = dataclasses.replace(tiny_config.model, model=str(chat_model_dir))
    server = dataclasses.replace(tiny_config.server, max_chat_messages=4)
    return server_factory(dataclasses.replace(tiny_config, model=model, server=server))


def test_max_chat_messages_is_the_servers_own(four_messages_url: str) -> None:
    url = f"{four_messages_url}/v1/chat/completions"
    turns = [{"role": r, "content": "Hi"} for r in ("user", "assistant", "user", "assistant")]
    ok = httpx.post(url, json={"model": "tiny-llama", "messages": turns, "max_tokens": 2})
    assert ok.status_code == 200, ok.text
    five = {"model": "tiny-llama", "messages": [*turns, turns[0]], "max_tokens": 2}
    assert_400(httpx.post(url, json=five), "5 messages; at most 4", "--max-chat-messages")
