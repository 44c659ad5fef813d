"""``/metrics`` read as the Gateway API Inference Extension's endpoint picker reads it, while
requests for one adapter run and requests for another wait (a real uvicorn server on the tiny
model, its engine slowed down between steps; one adapter slot, so the second adapter queues).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from completion_helpers import PROMPT
from controlled_engine import controlled_engine
from prometheus_client.parser import text_string_to_metric_families

from loraplex.config import Config

RUNNING, WAITING = "tiny-a", "tiny-b"
KINDS = ("hits", "misses")


@pytest.fixture(scope="module")
def slow_server(
    server_factory: Callable[..., str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, dict]:
    """Two adapters (tiny-a and a copy, tiny-b), one device slot, a step delay knob."""
    store = tmp_path_factory.mktemp("two-adapters")
    shutil.copytree(tiny_adapters_dir / RUNNING, store / RUNNING)
    shutil.copytree(tiny_adapters_dir / RUNNING, store / WAITING)
    lora = dataclasses.replace(
        tiny_config.lora, max_loras=1, max_pinned_loras=0, adapters_dir=str(store)
    )
    # Other test modules in the session may have used up the default 32 adapter labels.
    server = dataclasses.replace(tiny_config.server, metrics_adapter_labels=1000)
    config = dataclasses.replace(tiny_config, lora=lora, server=server)
    engine, knobs = controlled_engine(config)
    return server_factory(config, engine), knobs


@pytest.fixture
def knobs(slow_server: tuple[str, dict]) -> Iterator[dict]:
    yield slow_server[1]
    slow_server[1]["delay"] = 0.0


def _scrape(url: str) -> dict[str, list]:
    """metric family name -> its samples (name, labels, value)."""
    text = httpx.get(f"{url}/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(families: dict[str, list], name: str, **labels: str) -> float:
    family = re.sub(r"_(total|count|sum|bucket)$", "", name)
    for sample in families.get(family, []):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return 0.0


def _residency(families: dict[str, list]) -> set[tuple[str, str]]:
    return {(s.labels["adapter"], s.labels["tier"]) for s in families["loraplex_adapter_resident"]}


def _post(url: str, adapter: str, results: list[int]) -> None:
    body = {"model": adapter, "prompt": PROMPT, "max_tokens": 40, "ignore_eos": True}
    results.append(httpx.post(f"{url}/v1/completions", json=body, timeout=120).status_code)


def _wait_for(url: str, done: Callable[[dict[str, list]], bool], within: float = 30) -> dict:
    deadline = time.monotonic() + within
    while True:
        families = _scrape(url)
        if done(families):
            return families
        assert time.monotonic() < deadline, "the server never reached the expected state"
        time.sleep(0.05)


def test_metrics_while_one_adapter_runs_and_another_waits(
    slow_server: tuple[str, dict], knobs: dict
) -> None:
    url = slow_server[0]
    before = _scrape(url)
    knobs["delay"] = 0.1  # 40 tokens take 4 s: time to look
    results: list[int] = []
    threads = [threading.Thread(target=_post, args=(url, RUNNING, results)) for _ in range(3)]
    for thread in threads:
        thread.start()
    _wait_for(url, lambda f: _value(f, "vllm:num_requests_running") == 3)
    late = [threading.Thread(target=_post, args=(url, WAITING, results)) for _ in range(2)]
    for thread in late:
        thread.start()
    during = _wait_for(url, lambda f: _value(f, "vllm:num_requests_waiting") == 2)

    assert _value(during, "vllm:num_requests_running") == 3
    assert 0 < _value(during, "vllm:kv_cache_usage_perc") <= 1
    (cache,) = during["vllm:cache_config_info"]
    assert cache.labels == {"block_size": "16", "num_gpu_blocks": "128"} and cache.value == 1
    (lora,) = during["vllm:lora_requests_info"]
    assert lora.labels == {
        "max_lora": "1",
        "running_lora_adapters": RUNNING,
        "waiting_lora_adapters": WAITING,  # vLLM would list tiny-a here too
    }
    assert time.time() - 30 < lora.value <= time.time()
    resident = _residency(during)
    assert {(RUNNING, "device"), (RUNNING, "host")} <= resident
    assert (WAITING, "device") not in resident
    assert _value(during, "loraplex_client_requests_unfinished") == 5
    assert _value(during, "loraplex_adapters_resident") == 1

    knobs["delay"] = 0.0
    for thread in threads + late:
        thread.join(120)
    assert results == [200] * 5
    after = _wait_for(url, lambda f: _value(f, "vllm:num_requests_running") == 0)
    (lora,) = after["vllm:lora_requests_info"]
    assert lora.labels["running_lora_adapters"] == lora.labels["waiting_lora_adapters"] == ""

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("loraplex_adapter_requests_total", adapter=RUNNING, outcome="length") == 3
    assert grew("loraplex_adapter_requests_total", adapter=WAITING, outcome="length") == 2
    assert grew("loraplex_adapter_loads_total", tier="device") >= 2  # a, then b in its slot
    assert grew("loraplex_adapter_evictions_total", tier="device") >= 1
    assert grew("loraplex_adapter_cache_misses_total", tier="device") >= 2
    assert grew("loraplex_adapter_cache_hits_total", tier="device") > 0  # the decode steps
    host_lookups = [grew(f"loraplex_adapter_cache_{kind}_total", tier="host") for kind in KINDS]
    assert sum(host_lookups) == 5  # one per request
    assert grew("loraplex_queue_time_seconds_count") == 5
    assert grew("loraplex_inter_token_latency_seconds_count") == 5 * 39
    assert grew("loraplex_batch_size_count") >= 40
    resident = _residency(after)
    assert (WAITING, "device") in resident and (RUNNING, "device") not in resident
