"""loraplex over HTTP, for the benchmarks: a live in-process server for a config (on a free
loopback port), the config itself, and every request sent at once to ``/v1/completions``, timed
as one ``Measurement``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common import Measurement, free_memory  # bench/ is a folder of scripts, run as files


@contextmanager
def live_server(config: Any) -> Iterator[str]:
    """Base URL (no ``/v1``) of a loraplex server for ``config``; stopped and freed on exit."""
    from loraplex.api.app import create_app
    from loraplex.api.threaded_server import ThreadedServer

    server = ThreadedServer(create_app(config))
    try:
        yield server.start(timeout=600.0)
    finally:
        server.stop(timeout=60.0)
        del server
        free_memory()


def loraplex_config(
    dtype: str,
    adapters_dir: str | Path | None,
    max_loras: int = 16,
    max_lora_rank: int = 16,
    max_num_seqs: int = 64,
) -> Any:
    """A server config for the default model; everything not named here keeps its default."""
    from loraplex.config import Config, LoRAConfig, ModelConfig, SchedulerConfig

    return Config(
        model=ModelConfig(dtype=dtype),
        scheduler=SchedulerConfig(max_num_seqs=max(max_num_seqs, SchedulerConfig.max_num_seqs)),
        lora=LoRAConfig(
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            adapters_dir=str(adapters_dir) if adapters_dir else None,
        ),
    )


async def _complete_all(
    url: str, models: list[str], prompts: list[str], max_tokens: int
) -> tuple[list[dict[str, Any]], float]:
    import httpx

    limits = httpx.Limits(max_connections=len(prompts) + 4, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:

        async def one(model: str, prompt: str) -> dict[str, Any]:
            body = {
                "model": model,
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            response = await client.post("/v1/completions", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"/v1/completions -> {response.status_code}: {response.text}")
            return response.json()

        # Open the connections first, so the timed burst doesn't include TCP set-up.
        await asyncio.gather(*(client.get("/health") for _ in prompts))
        start = time.perf_counter()
        results = await asyncio.gather(*(one(m, p) for m, p in zip(models, prompts, strict=True)))
        seconds = time.perf_counter() - start
    return list(results), seconds


def http_completions(
    url: str, models: list[str], prompts: list[str], max_tokens: int, system: str
) -> Measurement:
    """Send every prompt at once (request i names ``models[i]``); time first sent to last back.

    Raises if a response is short of ``max_tokens`` (it would flatter the tokens/s).
    """
    results, seconds = asyncio.run(_complete_all(url, models, prompts, max_tokens))
    tokens = sum(r["usage"]["completion_tokens"] for r in results)
    if tokens != max_tokens * len(prompts):
        raise RuntimeError(f"{system}: {tokens} tokens, expected {max_tokens * len(prompts)}")
    texts = [r["choices"][0]["text"] for r in results]
    return Measurement(system, tokens, seconds, texts)
