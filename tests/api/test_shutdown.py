"""SIGTERM on a real ``loraplex serve`` process (the tiny model): /ready turns 503 at once, new
requests get a 503 in the OpenAI shape, requests in flight finish (or, past
--shutdown-timeout, end with an error event), and the process exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

STREAM = {"model": "tiny-llama", "prompt": "Hello", "stream": True, "ignore_eos": True}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    model: Path, adapters: Path, shutdown_timeout: float
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "loraplex.cli", "serve", "--model", str(model),
        "--served-model-name", "tiny-llama", "--max-model-len", "512", "--num-blocks", "256",
        "--adapters-dir", str(adapters), "--port", str(port), "--log-level", "warning",
        "--shutdown-timeout", str(shutdown_timeout),
    ]  # fmt: skip
    proc = subprocess.Popen(command, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the server exited during start-up"
        assert time.monotonic() < deadline, "the server did not start"
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)


@pytest.fixture
def server_proc(
    request: pytest.FixtureRequest, tiny_model_dir: Path, tiny_adapters_dir: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, url = start_server(tiny_model_dir, tiny_adapters_dir, request.param)
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def stream_events(url: str, body: dict, started: list) -> list[dict | str]:
    """POST a streamed completion; ``started`` gets an item at its first event."""
    events: list[dict | str] = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                if not events:
                    started.append(True)  # once per stream
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def drain_checks(proc: subprocess.Popen, url: str) -> float:
    """SIGTERM, then /ready and a new request, both answered 503 at once; their latency."""
    proc.send_signal(signal.SIGTERM)
    start = time.monotonic()
    deadline = start + 5
    while httpx.get(f"{url}/ready", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "/ready still 200 after SIGTERM"
        time.sleep(0.01)
    assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # alive while it drains
    new = httpx.post(
        f"{url}/v1/completions", json={"model": "tiny-llama", "prompt": "Hi"}, timeout=5
    )
    assert new.status_code == 503
    assert new.json()["error"]["code"] == "service_unavailable"
    assert "shutting down" in new.json()["error"]["message"]
    return time.monotonic() - start


@pytest.mark.parametrize("server_proc", [30.0], indirect=True)
def test_sigterm_lets_requests_in_flight_finish_then_exits_0(
    server_proc: tuple[subprocess.Popen, str],
) -> None:
    proc, url = server_proc
    started: list = []
    body = {**STREAM, "max_tokens": 400, "n": 4}
    with ThreadPoolExecutor(3) as pool:
        streams = [pool.submit(stream_events, url, body, started) for _ in range(3)]
        deadline = time.monotonic() + 60
        while len(started) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not any(s.done() for s in streams)  # all three are in flight at the signal
        took = drain_checks(proc, url)
        results = [s.result(timeout=60) for s in streams]
    assert took < 2.0
    for events in results:
        assert events[-1] == "[DONE]"
        reasons = [c["finish_reason"] for e in events[:-1] for c in e["choices"]]
        assert reasons.count("length") == 4  # every choice of every stream ran to max_tokens
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("server_proc", [0.5], indirect=True)
def test_past_the_shutdown_timeout_streams_end_with_an_error_event(
    server_proc: tuple[subprocess.Popen, str],
) -> None:
    proc, url = server_proc
    started: list = []
    body = {**STREAM, "max_tokens": 500, "n": 16}
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(stream_events, url, body, started)
        deadline = time.monotonic() + 60
        while not started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # The drain lasts only 0.5 s: the 503s are checked by the test above, not here.
        proc.send_signal(signal.SIGTERM)
        events = stream.result(timeout=60)
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and error["error"]["code"] == "service_unavailable"
    assert "--shutdown-timeout" in error["error"]["message"]
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("server_proc", [0.5], indirect=True)
def test_an_upload_cut_short_by_sigterm_gets_a_503(
    server_proc: tuple[subprocess.Popen, str], tiny_adapters_dir: Path
) -> None:
    """A client still sending an upload when the server stops: after the close grace, a 503 in
    the OpenAI shape (the server is going away), never a bare 500."""
    proc, url = server_proc
    boundary = "b0undary"
    config = (tiny_adapters_dir / "tiny-a" / "adapter_config.json").read_bytes()
    part = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="config"; '
            f'filename="adapter_config.json"\r\n\r\n'
        ).encode()
        + config
        + b"\r\n"
    )
    head = (
        f"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nContent-Length: {len(part) + 100_000}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head + part)  # then a trickle, well above nothing, until the answer
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        answer = b""
        sock.settimeout(0.2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 503 Service Unavailable", answer[:300]
    error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "service_unavailable" and error["type"] == "server_error"
    assert proc.wait(timeout=30) == 0
