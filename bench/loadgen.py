"""The load generator: drives a live loraplex server over HTTP with streaming completions.

Two arrival modes on the same requests: a closed loop (at most ``concurrency`` requests in
flight; the next is sent when one finishes) or an open loop (each request sent at its
``arrival`` time, a Poisson process from :func:`workload.with_poisson_arrivals`, however many are
in flight). Every request is ``POST /v1/completions`` with its prompt as token ids,
``max_tokens`` new tokens, greedy, ``ignore_eos`` and ``stream`` with usage; each streamed chunk's
arrival time is recorded (see :mod:`stats` for what is computed from them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from stats import RequestRecord, RunStats
from workload import Request

Tick = Callable[[int], None]  # called with 1 as each request finishes (a progress bar)


class RequestFailed(RuntimeError):
    """The server refused a request, broke its stream off, or sent fewer tokens than asked."""


def base_model_name(url: str) -> str:
    """The id the server lists for its base model (the entry without a parent)."""
    import httpx

    served = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
    return next(m["id"] for m in served if m.get("parent") is None)


def completion_body(request: Request, base_model: str, cache_salt: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.adapter or base_model,
        "prompt": list(request.prompt),
        "max_tokens": request.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cache_salt is not None:
        body["cache_salt"] = cache_salt
    return body


async def _stream_one(client: Any, body: dict[str, Any], record: RequestRecord) -> None:
    """Send one streaming completion and fill ``record`` as its chunks arrive."""
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")
            raise RequestFailed(f"/v1/completions -> {response.status_code}: {detail[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise RequestFailed(f"error in the stream: {chunk['error']}")
            if chunk.get("choices"):
                record.token_times.append(time.perf_counter())
                record.text += chunk["choices"][0]["text"]
            if chunk.get("usage"):
                record.output_tokens = chunk["usage"]["completion_tokens"]
    if record.output_tokens != body["max_tokens"]:
        raise RequestFailed(f"{record.output_tokens} tokens, expected {body['max_tokens']}")


async def _run(
    url: str,
    requests: Sequence[Request],
    concurrency: int | None,
    base_model: str,
    cache_salt: str | None,
    tick: Tick,
) -> tuple[list[RequestRecord], int, float]:
    import httpx

    connections = concurrency or len(requests)
    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        # Open the connections first, so the timed run doesn't include TCP set-up.
        await asyncio.gather(*(client.get("/health") for _ in range(connections)))
        gate = asyncio.Semaphore(concurrency) if concurrency else None
        failures: list[BaseException] = []
        start = time.perf_counter()

        async def one(request: Request) -> RequestRecord | None:
            if gate is None:  # open loop: wait for the request's arrival time
                await asyncio.sleep(max(0.0, start + request.arrival - time.perf_counter()))
                sent = start + request.arrival
            else:
                await gate.acquire()
                sent = time.perf_counter()
            record = RequestRecord(request.index, sent, adapter=request.adapter)
            try:
                await _stream_one(client, completion_body(request, base_model, cache_salt), record)
                return record
            except (RequestFailed, httpx.HTTPError) as exc:
                failures.append(exc)
                return None
            finally:
                if gate is not None:
                    gate.release()
                tick(1)

        results = await asyncio.gather(*(one(r) for r in requests))
    records = [r for r in results if r is not None]
    end = max((r.token_times[-1] for r in records if r.token_times), default=start)
    if failures and concurrency:
        raise RequestFailed(f"{len(failures)} of {len(requests)} requests failed: {failures[0]}")
    return records, len(failures), end - start


def run_load(
    url: str,
    requests: Sequence[Request],
    system: str,
    *,
    concurrency: int | None,
    base_model: str,
    cache_salt: str | None = None,
    tick: Tick = lambda n: None,
) -> RunStats:
    """Run ``requests`` against the server at ``url``: a closed loop of ``concurrency`` (where
    any failed request raises :class:`RequestFailed`, as it would flatter the numbers) or, with
    ``concurrency`` None, open-loop arrivals (failures, e.g. 429 under overload, are counted).

    ``cache_salt`` keeps this run's prompts from reusing KV cached by an earlier run.
    """
    records, failed, seconds = asyncio.run(
        _run(url, requests, concurrency, base_model, cache_salt, tick)
    )
    return RunStats(system, seconds, records, failed)
