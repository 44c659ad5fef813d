"""Issue 10's request-side attacks, each through a real uvicorn server: the attacker gets a
clear 4xx, a concurrent client is served, ``/health`` stays fast and memory comes back.

Covered: a mix whose real per-module ranks overflow a slot (2), out-of-range integers such as a
65-bit seed (3), a small body fanning out to thousands of sequences (6), stop conditions sized
to cost O(T^2) per token (7), lone surrogates and NUL bytes in strings (10).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from attack_helpers import rss_mb
from builders import save_adapter

from loraplex.config import Config, SchedulerConfig


@pytest.fixture(scope="module")
def url(
    server_factory: Callable[..., str],
    tiny_config: Config,
    tiny_model_dir: Path,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The tiny model with its adapter plus ``wide``: config r=1, q_proj really rank 8."""
    store = tmp_path_factory.mktemp("hardening-store")
    for entry in tiny_adapters_dir.iterdir():
        (store / entry.name).symlink_to(entry, target_is_directory=True)
    save_adapter(
        tiny_model_dir, store / "wide", seed=3, r=1, lora_alpha=2,
        rank_pattern={"q_proj": 8}, target_modules=["q_proj", "v_proj"],
    )  # fmt: skip
    config = dataclasses.replace(
        tiny_config,
        lora=dataclasses.replace(tiny_config.lora, adapters_dir=str(store)),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256),
    )
    return server_factory(config)


def _victim(url: str, model: str, results: list) -> None:
    body = {"model": model, "prompt": "t3 t4 t5", "max_tokens": 8, "temperature": 0}
    results.append(httpx.post(f"{url}/v1/completions", json=body, timeout=60))


def _attack(url: str, tiny_model: str, body: dict, path: str = "/v1/completions") -> httpx.Response:
    """Send ``body`` while a victim runs; check the victim and /health, return the answer."""
    results: list[httpx.Response] = []
    victim = threading.Thread(target=_victim, args=(url, tiny_model, results))
    victim.start()
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    start = time.monotonic()
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert time.monotonic() - start < 2.0
    victim.join(60)
    assert results and results[0].status_code == 200, results[0].text
    assert results[0].json()["choices"][0]["text"]
    return response


def _assert_400(response: httpx.Response, param: str | None = None) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


def test_mix_whose_real_ranks_overflow_is_refused_before_the_batch(
    url: str, base_name: str
) -> None:
    body = {
        "model": base_name, "prompt": "t3 t4", "max_tokens": 4,
        "adapters": [{"name": "wide", "weight": 0.5}, {"name": "tiny-a", "weight": 0.5}],
    }  # fmt: skip
    response = _attack(url, base_name, body)  # 8 + 4 > --max-lora-rank 8, whatever r says
    _assert_400(response, "adapters")
    assert "rank 12" in response.json()["error"]["message"]
    ok = {"model": "wide", "prompt": "t3 t4", "max_tokens": 4}
    assert httpx.post(f"{url}/v1/completions", json=ok, timeout=60).status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("seed", 18446744073709551616), ("seed", -(2**64)), ("top_k", 10**20)],
)
def test_out_of_range_integers_are_400s_and_leak_nothing(
    url: str, base_name: str, field: str, value: int
) -> None:
    mix = [{"name": "wide", "weight": 0.5}, {"name": "tiny-a", "weight": 0.1}]
    body = {"model": base_name, "prompt": "t3", "max_tokens": 2, field: value, "adapters": mix}
    _assert_400(_attack(url, base_name, body), field)
    before = rss_mb()
    for _ in range(30):
        _assert_400(httpx.post(f"{url}/v1/completions", json=body, timeout=60), field)
    assert rss_mb() - before < 50  # refused before any reference or mix is kept


def test_fan_out_past_the_cap_is_refused_before_tokenizing(url: str, base_name: str) -> None:
    body = {"model": base_name, "prompt": [[5, 6]] * 1000, "n": 64, "max_tokens": 2}
    start = time.monotonic()
    response = _attack(url, base_name, body)
    _assert_400(response, "n")
    assert "--max-seqs-per-request" in response.json()["error"]["message"]
    assert time.monotonic() - start < 30
    texts = {"model": base_name, "prompt": ["t5 t6"] * 300, "max_tokens": 2}
    _assert_400(httpx.post(f"{url}/v1/completions", json=texts, timeout=60), "prompt")


def test_oversized_stop_conditions_are_refused(url: str, base_name: str) -> None:
    long_stops = {"model": base_name, "prompt": "t3", "max_tokens": 4, "stop": ["x" * 8000] * 4}
    _assert_400(_attack(url, base_name, long_stops), "stop")
    many_ids = {"model": base_name, "prompt": "t3", "max_tokens": 4,
                "stop_token_ids": list(range(100_000))}  # fmt: skip
    _assert_400(_attack(url, base_name, many_ids), "stop_token_ids")
    allowed = {"model": base_name, "prompt": "t3", "max_tokens": 4, "stop": ["y" * 512] * 16}
    assert httpx.post(f"{url}/v1/completions", json=allowed, timeout=60).status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "\ud800", "prompt": "t3"}),
        ("/v1/completions", {"model": "M", "prompt": "t3 \ud800"}),
        (
            "/v1/chat/completions",
            {"model": "M", "messages": [{"role": "user", "content": "\udfff"}]},
        ),
        ("/generate", {"inputs": "t3", "parameters": {"adapter_id": "\ud800"}}),
        ("/generate", {"inputs": "\ud800 t3"}),
        ("/v1/adapters/load", {"name": "x", "path": "/tmp/\ud800"}),
        ("/v1/adapters/load", {"name": "x", "path": "/tmp/a\u0000b"}),
    ],
)
def test_lone_surrogates_and_nul_bytes_are_400s(
    url: str, base_name: str, path: str, body: dict
) -> None:
    import json

    body = json.loads(json.dumps(body).replace('"M"', json.dumps(base_name)))
    content = json.dumps(body, ensure_ascii=True)  # "\\ud800" escapes, as a client sends them
    with httpx.Client(timeout=60) as client:  # one keep-alive connection for both requests
        response = client.post(
            f"{url}{path}", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code in (400, 403, 404), response.text
        assert response.json()["error"]["message"]
        again = client.get(f"{url}/health")  # the connection survived the refusal
        assert again.status_code == 200
