"""Issue 24, item 4 and the lost 413: bodies that cost the event loop more than their bytes.

Through a live keyed server with two tenants, on raw sockets: a body of 1-byte chunks sent as
fast as a socket goes (without a key, and with one), and 15 MB JSON bodies without a key; while
each runs, ``/health`` and another tenant's greedy completion are timed against a baseline
measured alone in the same test. Also: a client still sending an over-limit body sees its 413.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from tenant_world import KEYS, World, greedy, world_fixture
from victim_clock import Latencies, connect, measure, read_answer, request_head, status_of

from loraplex.api.chunk_guard import BYTES_PER_CHUNK, FREE_CHUNKS

world = world_fixture("floods")
BASELINE_S, ATTACK_S = 2.0, 3.0
SLOWDOWN = 4.0  # a victim's median may grow this much under attack (the attack's threads
SLACK_S = 0.25  # share this process and two busy cores), plus this; unguarded: 100-3000x


def victim(world: World) -> Callable[[], str]:
    return lambda: greedy(world.url, "globex", "support")


def chunk_flood(world: World, key: str | None, answers: list[bytes]) -> Callable:
    """One socket after another, each sending ``1\\r\\na\\r\\n`` chunks as fast as it can until
    the server stops reading or answers; ``answers``: what each connection got back."""
    auth = [f"Authorization: Bearer {key}"] if key else []
    head = request_head("/v1/completions", "Transfer-Encoding: chunked", *auth)
    block = b"1\r\na\r\n" * 8192

    def attack(stop: threading.Event) -> None:
        while not stop.is_set():
            with connect(world.url) as sock:
                try:
                    sock.sendall(head)
                    while not stop.is_set():
                        sock.sendall(block)
                except OSError:  # closed or no longer read: see what it said
                    pass
                answers.append(read_answer(sock, 0.5))

    return attack


def json_flood(world: World, answers: list[tuple[int | None, float]]) -> Callable:
    """15 MB JSON bodies (a prompt of 7.5M token ids) without a key, one after another;
    ``answers``: (status, seconds to it) of each."""
    prompt = [1] * 7_500_000
    body = json.dumps({"model": "tiny-llama", "prompt": prompt}, separators=(",", ":")).encode()
    head = request_head("/v1/completions", f"Content-Length: {len(body)}")

    def attack(stop: threading.Event) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            with connect(world.url, timeout=30) as sock:
                with contextlib.suppress(OSError):
                    sock.sendall(head + body)
                status = status_of(read_answer(sock, 30))
            answers.append((status, time.perf_counter() - start))

    return attack


@pytest.fixture
def baseline(world: World) -> Iterator[Latencies]:
    alone = measure(world.url, victim(world), BASELINE_S)
    print("\n" + alone.line("alone"))
    yield alone


def check_victims(world: World, alone: Latencies, attacked: Latencies) -> None:
    print(attacked.line("under attack"))
    assert set(attacked.texts) == {world.texts["globex"]}  # the same greedy text throughout
    assert attacked.health_median < SLOWDOWN * alone.health_median + SLACK_S
    assert attacked.completion_median < SLOWDOWN * alone.completion_median + SLACK_S


def test_one_byte_chunks_without_a_key_get_401_from_the_head(
    world: World, baseline: Latencies
) -> None:
    """The 401 comes from the head: no chunk is parsed, even those in the head's read."""
    answers: list[bytes] = []
    attacks = [chunk_flood(world, None, answers) for _ in range(2)]
    check_victims(world, baseline, measure(world.url, victim(world), ATTACK_S, attacks))
    statuses = [status_of(a) for a in answers]
    print(f"attacker: {len(answers)} connections: {statuses.count(401)} 401s, "
          f"{statuses.count(400)} 400s")  # fmt: skip
    assert len(answers) >= 2 and set(statuses) == {401}, answers[:3]
    codes = {json.loads(a.partition(b"\r\n\r\n")[2])["error"]["code"] for a in answers}
    assert codes == {"invalid_api_key"}


def test_one_byte_chunks_with_a_key_are_cut_off_with_a_400(
    world: World, baseline: Latencies
) -> None:
    answers: list[bytes] = []
    attacks = [chunk_flood(world, KEYS["acme-app"], answers) for _ in range(2)]
    check_victims(world, baseline, measure(world.url, victim(world), ATTACK_S, attacks))
    print(f"attacker: {len(answers)} connections, statuses {sorted(set(map(status_of, answers)))}")
    assert len(answers) >= 2 and all(status_of(a) == 400 for a in answers), answers[:3]
    error = json.loads(answers[0].partition(b"\r\n\r\n")[2])["error"]
    assert "chunks" in error["message"] and error["type"] == "invalid_request_error"
    assert b"connection: close" in answers[0].lower()


def test_json_bodies_without_a_key_are_401_before_they_are_read(
    world: World, baseline: Latencies
) -> None:
    answers: list[tuple[int | None, float]] = []
    attacks = [json_flood(world, answers) for _ in range(2)]
    check_victims(world, baseline, measure(world.url, victim(world), ATTACK_S, attacks))
    took = sorted(seconds for _, seconds in answers)
    print(f"attacker: {len(answers)} bodies of 15 MB, median answer {took[len(took) // 2]:.3f} s")
    assert answers and {status for status, _ in answers} == {401}, answers
    assert took[len(took) // 2] < 1.0  # unguarded: 6-8 s, the body read and parsed first


@pytest.mark.parametrize("size", [7, 300])
def test_reasonable_chunks_are_served(world: World, size: int) -> None:
    """Few small chunks, or many past the free ones that average over BYTES_PER_CHUNK."""
    request = {"model": "support", "prompt": "The capital of France is", "temperature": 0.0}
    padding = "x" * (0 if size == 7 else 600_000)  # an ignored field: 2,000 chunks of 300
    body = json.dumps({**request, "max_tokens": 8, "ignore_eos": True, "pad": padding}).encode()
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    assert len(pieces) < FREE_CHUNKS if size == 7 else len(pieces) > FREE_CHUNKS
    assert size < BYTES_PER_CHUNK or size > BYTES_PER_CHUNK
    headers = {"Authorization": f"Bearer {KEYS['globex']}", "Content-Type": "application/json"}
    response = httpx.post(f"{world.url}/v1/completions", content=iter(pieces), headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"] == world.texts["globex"]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_still_sending_an_over_limit_body_reads_its_413(
    world: World, framing: str
) -> None:
    """http.client (as urllib and requests do) sends the whole body before it reads: a reset
    while it sends loses the answer. The server answers, then reads and drops the rest."""
    size, mib = 20 << 20, b" " * (1 << 20)  # the cap is 16 MiB
    headers = {"Authorization": f"Bearer {KEYS['globex']}", "Content-Type": "application/json"}
    host, port = world.url.removeprefix("http://").split(":")
    seen: list[int | str] = []
    for _ in range(3):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        body = b" " * size if framing == "content-length" else iter([mib] * (size >> 20))
        try:
            conn.request("POST", "/v1/completions", body, headers, encode_chunked=True)
            seen.append(conn.getresponse().status)
        except OSError as exc:
            seen.append(type(exc).__name__)
        finally:
            conn.close()
    assert seen == [413] * 3, seen
