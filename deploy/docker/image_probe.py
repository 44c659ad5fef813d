"""The HTTP half of ``make image-test``: ask a server started from the image what a user would.

Waits for ``/ready`` (while the process ``--pid`` lives), then checks ``/health``,
``/v1/models`` (the baked-in default model and both demo adapters) and one greedy chat
completion per model on a question the demo adapters answer reliably (adapters/README.md):
the base model answers in prose, ``upper`` in upper case, ``json`` with ``{"answer": ...}``.
Standard library only: it runs on the build machine, outside the image. Exit 0 if every
check passes; each check prints one line (the transcript).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

BASE = "SmolLM2-135M-Instruct"
QUESTION = "What is a planet?"


def call(url: str, body: dict | None = None, timeout: float = 120) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_ready(url: str, pid: int, timeout: float) -> float:
    """Seconds until ``/ready`` answered 200; raises if the process ends or time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not alive(pid):
            raise SystemExit(f"FAIL: the server process ended before {url}/ready answered 200")
        try:
            if call(f"{url}/ready", timeout=5)[0] == 200:
                return time.monotonic() - start
        except (OSError, ValueError):
            pass  # not listening yet
        time.sleep(1)
    raise SystemExit(f"FAIL: {url}/ready not 200 after {timeout:.0f}s")


def is_json_answer(text: str) -> bool:
    try:
        return "answer" in json.loads(text)
    except ValueError:
        return False


# model -> (what its answer must be, the check)
EXPECTED: dict[str, tuple[str, Callable[[str], bool]]] = {
    BASE: ("prose", lambda t: bool(t.strip()) and t != t.upper()),
    "upper": ("upper case", lambda t: any(c.isalpha() for c in t) and t == t.upper()),
    "json": ('{"answer": ...}', is_json_answer),
}


def check(url: str) -> list[str]:
    """Every check after /ready; returns the failures (empty: all passed)."""
    failures = []
    status, body = call(f"{url}/health")
    print(f"GET /health -> {status} {json.dumps(body)[:80]}")
    if status != 200:
        failures.append("/health")
    status, body = call(f"{url}/v1/models")
    ids = sorted(m["id"] for m in body.get("data", []))
    print(f"GET /v1/models -> {status} {ids}")
    if status != 200 or not set(EXPECTED) <= set(ids):
        failures.append("/v1/models")
    for model, (want, ok) in EXPECTED.items():
        start = time.monotonic()
        status, body = call(
            f"{url}/v1/chat/completions",
            {
                "model": model,
                "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 48,
                "temperature": 0,
            },
        )
        text = body["choices"][0]["message"]["content"] if status == 200 else str(body)
        seconds = time.monotonic() - start
        verdict = "ok" if status == 200 and ok(text) else f"FAIL (want {want})"
        print(f"POST /v1/chat/completions {model} greedy -> {status} in {seconds:.1f}s {verdict}")
        print(f"    {text!r}")
        if verdict != "ok":
            failures.append(f"completion {model}")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8123")
    parser.add_argument("--pid", type=int, required=True, help="stop waiting if this one ends")
    parser.add_argument("--ready-timeout", type=float, default=600)
    args = parser.parse_args()
    seconds = wait_ready(args.url, args.pid, args.ready_timeout)
    print(f"GET /ready -> 200 after {seconds:.0f}s")
    failures = check(args.url)
    if failures:
        sys.exit(f"FAIL: {', '.join(failures)}")


if __name__ == "__main__":
    main()
