"""Bodies over --max-request-mb are answered 413 at once (before parsing), prompts that cannot
fit the context are refused from their length, and neither holds up other clients."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest

MIB = 1 << 20


def head(url: str, extra: str) -> tuple[socket.socket, bytes]:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    lines = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"{extra}\r\n"
    )
    return sock, lines.encode()


def read_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split()[1])


def timed(fn: Callable[[], object]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def others_stay_fast(url: str, base_name: str, during: Callable[[], int]) -> int:
    """Run ``during`` while /health and another client's 4-token request are timed."""
    result: dict[str, int] = {}
    worker = threading.Thread(target=lambda: result.update(status=during()))
    worker.start()
    body = {"model": base_name, "prompt": "Hello", "max_tokens": 4}
    health = timed(lambda: httpx.get(f"{url}/health", timeout=10).raise_for_status())
    other = timed(
        lambda: httpx.post(f"{url}/v1/completions", json=body, timeout=10).raise_for_status()
    )
    worker.join(30)
    assert health < 1.0 and other < 1.0, (health, other)
    return result["status"]


def test_a_200_mb_body_is_413_before_it_is_sent(live_server: str, base_name: str) -> None:
    def send() -> int:
        sock, data = head(live_server, f"Content-Length: {200 * MIB}\r\n")
        with sock:
            sock.sendall(data + b'{"model": "' + b"x" * MIB)  # the first MiB of it
            return read_status(sock)

    start = time.monotonic()
    assert others_stay_fast(live_server, base_name, send) == 413
    assert time.monotonic() - start < 2.0
    assert httpx.get(f"{live_server}/health").status_code == 200


def test_a_50_mb_chunked_body_is_cut_off_at_the_cap(live_server: str, base_name: str) -> None:
    def send() -> int:
        sock, data = head(live_server, "Transfer-Encoding: chunked\r\n")
        status: list[int] = []
        reader = threading.Thread(target=lambda: status.append(read_status(sock)))
        with sock:
            sock.sendall(data)
            reader.start()
            chunk = b"%x\r\n%s\r\n" % (MIB, b" " * MIB)
            try:
                for _ in range(50):
                    if status:
                        break
                    sock.sendall(chunk)
            except OSError:  # the server closed the connection after its 413
                pass
            reader.join(10)
        return status[0]

    start = time.monotonic()
    assert others_stay_fast(live_server, base_name, send) == 413
    assert time.monotonic() - start < 2.0
    assert httpx.get(f"{live_server}/health").status_code == 200


def test_the_413_is_an_openai_error(live_server: str) -> None:
    response = httpx.post(f"{live_server}/v1/completions", content=b" " * (17 * MIB), timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert "--max-request-mb" in response.json()["error"]["message"]


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_a_prompt_longer_than_the_context_is_refused_untokenized(
    live_server: str, chat_url: str, base_name: str, route: str
) -> None:
    text = "word " * (2 * MIB)  # 10 MB: under the body cap, far over 256 tokens
    if route == "completions":
        url, body = f"{live_server}/v1/completions", {"model": base_name, "prompt": text}
    else:
        messages = [{"role": "user", "content": text}]
        url, body = f"{chat_url}/v1/chat/completions", {"model": base_name, "messages": messages}
    payload = json.dumps(body)
    start = time.monotonic()
    headers = {"Content-Type": "application/json"}
    response = httpx.post(url, content=payload, headers=headers, timeout=30)
    elapsed = time.monotonic() - start
    assert response.status_code == 400, response.text
    assert "context length of 256 tokens" in response.json()["error"]["message"]
    assert elapsed < 2.0  # tokenizing 10 MB would take many seconds
