"""Timing the victims of an attack: ``/health`` probes and another tenant's greedy completion,
measured in a loop alone (the baseline) and then while an attack runs in other threads, in one
test, so that their ratio means something on a shared machine. Also the raw-socket pieces the
HTTP-level attacks share."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

Attack = Callable[[threading.Event], None]  # runs until the event is set


@dataclass
class Latencies:
    """Seconds each victim call took (every call, in order) and what each returned."""

    health: list[float] = field(default_factory=list)
    completion: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def health_median(self) -> float:
        return statistics.median(self.health)

    @property
    def completion_median(self) -> float:
        return statistics.median(self.completion)

    def line(self, label: str) -> str:
        return (
            f"{label}: /health median {self.health_median * 1e3:.0f} ms (max "
            f"{max(self.health) * 1e3:.0f}, {len(self.health)} probes); completion median "
            f"{self.completion_median * 1e3:.0f} ms (max {max(self.completion) * 1e3:.0f}, "
            f"{len(self.completion)} runs)"
        )


def measure(
    url: str, complete: Callable[[], str], seconds: float, attacks: Sequence[Attack] = ()
) -> Latencies:
    """Run ``attacks`` (each in its own thread) for ``seconds`` while one thread probes
    ``/health`` every 50 ms and another runs ``complete`` back to back; every victim call
    started before the end is waited for (so a stalled one is counted, not dropped)."""
    out = Latencies()
    stop = threading.Event()

    def health() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                start = time.perf_counter()
                assert http.get(f"{url}/health").status_code == 200
                out.health.append(time.perf_counter() - start)
                time.sleep(0.05)

    def completions() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            out.texts.append(complete())
            out.completion.append(time.perf_counter() - start)

    attackers = [threading.Thread(target=attack, args=(stop,)) for attack in attacks]
    victims = [threading.Thread(target=health), threading.Thread(target=completions)]
    for thread in attackers:
        thread.start()
    time.sleep(0.2 if attacks else 0.0)  # the attack is under way before the clock starts
    for thread in victims:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in victims + attackers:
        thread.join(timeout=120)
    assert out.health and out.completion, out
    return out


def connect(url: str, timeout: float = 1.0) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def request_head(path: str, *lines: str) -> bytes:
    """A POST head to ``path`` with ``lines`` (``"Name: value"``) added."""
    extra = "".join(f"{line}\r\n" for line in lines)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n".encode()
    )


def read_answer(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """What the server sent on ``sock`` until it closed it or ``timeout`` passed (b"" if the
    connection was reset before anything could be read)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def status_of(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else None
