"""Issue 10, item 11: connections that never finish are closed. Raw sockets on loopback against
a live server with short deadlines: uploads stalled mid-body get a 408 and leave no temporary
folder or file descriptor; slowloris heads, silent sockets and idle keep-alive connections are
closed; a slow but steady upload above --body-min-rate still succeeds."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from adapter_files import PROMPT, Env, complete, start_env, text
from attack_helpers import bystanders, open_fds

from loraplex.api import upload as upload_module
from loraplex.config import Config, ServerConfig

DEADLINES = ServerConfig(
    timeout_keep_alive=1.0, header_timeout=1.0, body_timeout=1.0, body_min_rate=5_000
)
SLACK_S = 2.5  # how much later than its deadline a connection may close (a loaded machine)


@pytest.fixture(scope="module")
def env(
    server_factory: Callable[[Config], str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    config = dataclasses.replace(tiny_config, server=DEADLINES)
    env = start_env(server_factory, config, tiny_adapters_dir, tmp_path_factory.mktemp("slow"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(upload_module, "UPLOAD_TMP_DIR", str(env.tmp))
        yield env


def connect(env: Env) -> socket.socket:
    parts = urlsplit(env.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=30)


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def multipart(env: Env, name: str) -> tuple[bytes, bytes]:
    """(headers, body) of a valid upload of the tiny adapter, padded with a description."""
    boundary = "loraplexboundary"
    parts = [
        ('name="name"', name.encode()),
        ('name="description"', b"x" * 4000),
        ('name="config"; filename="adapter_config.json"', env.files.config),
        ('name="weights"; filename="adapter_model.safetensors"', env.files.weights),
    ]
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode()
            + data
            + b"\r\n"
            for disposition, data in parts
        )
        + f"--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/adapters HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    return head, body


def test_stalled_uploads_get_408_and_leave_nothing(env: Env, base_name: str) -> None:
    expected = {base_name: text(complete(env.url, base_name))}
    fds = open_fds()
    with bystanders(env.url, expected):
        sockets = []
        for i in range(20):
            head, body = multipart(env, f"stalled-{i}")
            sock = connect(env)
            sock.sendall(head + body[: len(body) // 2])  # then nothing more, ever
            sockets.append(sock)
        allowance = DEADLINES.body_timeout + len(body) // 2 / DEADLINES.body_min_rate
        start = time.monotonic()
        answers = [read_all(sock) for sock in sockets]
        waited = time.monotonic() - start
    for sock in sockets:
        sock.close()
    for answer in answers:
        status, _, rest = answer.partition(b"\r\n")
        assert status == b"HTTP/1.1 408 Request Timeout", answer[:200]
        error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
        assert "--body-timeout" in error["message"] and error["type"] == "invalid_request_error"
        assert b"connection: close" in rest.lower()
    assert waited < allowance + SLACK_S
    assert env.state()[2] == []  # every temporary folder removed
    assert open_fds() <= fds + 2


def test_slowloris_and_silent_sockets_are_closed(env: Env, base_name: str) -> None:
    expected = {base_name: text(complete(env.url, base_name))}
    fds = open_fds()
    with bystanders(env.url, expected):
        loris = [connect(env) for _ in range(50)]
        silent = [connect(env) for _ in range(10)]
        for sock in loris:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        open_loris = set(range(len(loris)))
        while open_loris and time.monotonic() - start < DEADLINES.header_timeout + SLACK_S:
            for i in list(open_loris):  # one more header byte each, as slowloris does
                try:
                    loris[i].sendall(b"X")
                except (BrokenPipeError, ConnectionResetError):
                    open_loris.discard(i)
            time.sleep(0.2)
        silent_answers = [read_all(sock) for sock in silent]  # until the server closes
        waited = time.monotonic() - start
    assert not open_loris, f"{len(open_loris)} slowloris sockets still open after {waited:.1f} s"
    assert silent_answers == [b""] * len(silent)  # closed, nothing to answer
    assert waited < DEADLINES.header_timeout + SLACK_S
    for sock in loris + silent:
        sock.close()
    time.sleep(0.2)
    assert open_fds() <= fds + 2


def test_idle_keep_alive_is_closed_and_json_bodies_have_a_deadline(env: Env) -> None:
    body = json.dumps({"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 1}).encode()
    head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with connect(env) as sock:  # a complete request, then idle: closed after keep-alive
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        start = time.monotonic()
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - start < DEADLINES.timeout_keep_alive + SLACK_S
    with connect(env) as sock:  # a JSON body that stops half-way: 408
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:20])
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"--body-timeout" in answer


def test_a_slow_steady_upload_above_the_minimum_rate_succeeds(env: Env) -> None:
    head, body = multipart(env, "steady")
    assert len(body) / DEADLINES.body_min_rate > 0.3  # it needs the rate allowance
    with connect(env) as sock:
        sock.sendall(head)
        step = len(body) // 10
        for offset in range(0, len(body), step):  # ~1.5 s in all: past --body-timeout
            sock.sendall(body[offset : offset + step])
            time.sleep(0.15)
        answer = read_all(sock)  # the 201, then the keep-alive deadline closes it
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
    assert text(complete(env.url, "steady"))
