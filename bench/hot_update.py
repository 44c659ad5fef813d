"""In-place adapter updates (issue 25): the latency from a training loop's
``POST /v1/load_lora_adapter {"load_inplace": true}`` to the first token on the new version,
against one decode step, through a live in-process server.

Per round, on adapter ``x`` (rank 16 on all seven projections, resident in a device slot): the
call (copy out of ``--adapter-roots``, the same checks as any upload, the store write, and the
new weights written into ``x``'s slot), then a one-token greedy request on ``x``. Two cases:
``idle`` (nothing runs on ``x``: its slot is overwritten in place) and ``busy`` (a long request
runs on the old version the whole time: the new version gets a slot of its own). Reference
rows: the first token on ``x`` with no update before it (the prefill alone) and the median gap
between decode tokens of one request.

    .venv/bin/python bench/hot_update.py                  # the default model (SmolLM2-135M)
    .venv/bin/python bench/hot_update.py --model DIR      # any Llama-style folder (a tiny one)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from adapter_store import ALL_SEVEN, write_adapter
from loraplex_http import live_server

PROMPT = "The capital of France is"


def first_token(client: httpx.Client, model: str, max_tokens: int = 1) -> list[float]:
    """Seconds from the request to each streamed token (greedy, ``max_tokens`` of them)."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    start, times = time.perf_counter(), []
    with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                times.append(time.perf_counter() - start)
    return times


def histogram(client: httpx.Client, name: str) -> tuple[float, float]:
    """(count, sum) of a histogram of ``/metrics`` so far (``name`` with its labels)."""
    values = {"count": 0.0, "sum": 0.0}
    base, _, labels = name.partition("{")
    for line in client.get("/metrics").text.splitlines():
        for part in values:
            if line.startswith(f"{base}_{part}{{{labels} " if labels else f"{base}_{part} "):
                values[part] = float(line.split()[-1])
    return values["count"], values["sum"]


def device_writes(client: httpx.Client) -> tuple[float, float]:
    """(count, seconds) of slot writes so far."""
    return histogram(client, 'loraplex_adapter_load_seconds{tier="device"}')


def update(client: httpx.Client, folder: Path) -> float:
    start = time.perf_counter()
    body = {"lora_name": "x", "lora_path": str(folder), "load_inplace": True}
    client.post("/v1/load_lora_adapter", json=body).raise_for_status()
    return time.perf_counter() - start


def long_request(url: str) -> None:
    with httpx.Client(base_url=url, timeout=600) as client:
        first_token(client, "x", 48)


def run(url: str, versions: list[Path], rounds: int) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {}
    with httpx.Client(base_url=url, timeout=600) as client:
        update(client, versions[0])
        for _ in range(3):  # warm-up: x resident, every path compiled/cached
            first_token(client, "x")
        for i in range(rounds):
            rows.setdefault("first token, no update (prefill)", []).append(
                first_token(client, "x")[0]
            )
            count, seconds = device_writes(client)
            call = update(client, versions[(2 * i + 1) % len(versions)])
            after = first_token(client, "x")[0]
            count2, seconds2 = device_writes(client)
            rows.setdefault("idle: call", []).append(call)
            rows.setdefault("idle: call -> first token", []).append(call + after)
            rows.setdefault("idle: slot writes per update", []).append(count2 - count)
            rows.setdefault("idle: slot write time", []).append(seconds2 - seconds)
            busy = threading.Thread(target=long_request, args=(url,))
            busy.start()  # a long request holds the old version
            time.sleep(0.2)
            call = update(client, versions[(2 * i + 2) % len(versions)])
            after = first_token(client, "x")[0]
            busy.join()
            rows.setdefault("busy: call -> first token", []).append(call + after)
        for _ in range(rounds):  # the engine's own step time, one request of 64 tokens on x
            count, seconds = histogram(client, "loraplex_step_duration_seconds")
            first_token(client, "x", 64)
            count2, seconds2 = histogram(client, "loraplex_step_duration_seconds")
            rows.setdefault("decode step (mean of 64)", []).append(
                (seconds2 - seconds) / (count2 - count)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: the default model)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    from loraplex.config import Config, LoRAConfig, ModelConfig
    from loraplex.engine.model.default import ensure_default_model

    model = Path(args.model) if args.model else ensure_default_model()
    with tempfile.TemporaryDirectory(prefix="hot-update-") as tmp:
        roots = Path(tmp) / "roots"
        versions = [roots / f"v{i}" for i in range(3)]
        for seed, folder in enumerate(versions):
            write_adapter(folder, model, 16, ALL_SEVEN, seed)
        config = Config(
            model=ModelConfig(model=str(model), dtype=args.dtype),
            lora=LoRAConfig(
                max_loras=4,
                max_lora_rank=16,
                adapters_dir=str(Path(tmp) / "store"),
                adapter_roots=(str(roots),),
            ),
        )
        (Path(tmp) / "store").mkdir()
        size = (versions[0] / "adapter_model.safetensors").stat().st_size
        with live_server(config) as url:
            rows = run(url, versions, args.rounds)
    print(f"model {model.name}, adapter r16 all seven ({size / 2**20:.1f} MiB as float16 file)")
    for name, values in rows.items():
        unit = "" if "per update" in name else "ms"
        scale = 1.0 if "per update" in name else 1e3
        median = statistics.median(values) * scale
        print(f"| {name} | {median:.2f} {unit} | n={len(values)} |")


if __name__ == "__main__":
    sys.exit(main())
