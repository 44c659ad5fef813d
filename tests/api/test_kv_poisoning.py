"""Issue 24.1 through a live keyed server: the inputs that poisoned every tenant's KV cache
(a mix weight of 1e300 on a public adapter that targets v_proj, uploads with lora_alpha 1e308
or 1e38, tensors scaled by 1e20) are refused with a 400 naming the field, and another
tenant's greedy text is the same before, during and after the attack."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from adapter_files import LAYER, assert_error
from safetensors.torch import load
from tenant_world import World, call, greedy, put, start_world, tenant_config

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE


@pytest.fixture(scope="module")
def world(server_factory, tiny_config, tiny_adapters_dir, tmp_path_factory) -> World:
    """The tenants' world on a small KV cache (32 blocks of 16), so freed blocks come round to
    the next owner at once, as they do on a busy server."""
    cache = dataclasses.replace(tiny_config.cache, num_blocks=32)
    config = dataclasses.replace(tiny_config, cache=cache)
    root = tmp_path_factory.mktemp("kv-poisoning")
    return start_world(
        server_factory, tenant_config(config, root, tiny_adapters_dir), tiny_adapters_dir
    )


LONG_PROMPT = " ".join(f"t{5 + i % 80}" for i in range(70))  # ~200 of the 256-token context


def mix_attack(world: World, weight: float) -> httpx.Response:
    """The issue's attack: an inference key, a long prompt, a public adapter on v_proj."""
    body = {
        "model": "tiny-llama",
        "prompt": LONG_PROMPT,
        "max_tokens": 4,
        "adapters": [{"name": "tiny-a", "weight": weight}],
    }
    return call(world.url, "acme-app", "POST", "/v1/completions", json=body)


def upload_with(world: World, name: str, config: dict | None = None, scale: float = 1.0):
    files = world.files
    if config is not None:
        files = files.with_config(**config)
    if scale != 1.0:
        tensor = load(files.weights)[f"{LAYER}.v_proj.lora_B.weight"]
        files = files.with_tensors(v_proj__lora_B__weight=tensor * scale)
    parts = [
        ("config", (CONFIG_FILE, files.config, "application/json")),
        ("weights", (WEIGHTS_FILE, files.weights, "application/octet-stream")),
    ]
    return call(world.url, "acme", "POST", "/v1/adapters", data={"name": name}, files=parts)


def victims(world: World, rounds: int) -> list[str]:
    """Greedy texts of globex's own adapter and of the base model (admin), ``rounds`` times."""
    jobs = [("globex", "support"), ("admin", "tiny-llama")] * rounds
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda job: greedy(world.url, *job), jobs))


def test_poisoning_inputs_are_refused_and_other_tenants_are_untouched(world: World) -> None:
    clean = victims(world, 1)
    assert clean[0] == world.texts["globex"]
    with ThreadPoolExecutor(8) as pool:
        attacks = [pool.submit(mix_attack, world, w) for w in (1e300, 1e38, 1e300, 101.0)]
        during = pool.submit(victims, world, 3)
        uploads = [
            pool.submit(upload_with, world, "alpha-huge", {"lora_alpha": 1e308}),
            pool.submit(upload_with, world, "alpha-38", {"lora_alpha": 1e38}),
            pool.submit(upload_with, world, "pattern", {"alpha_pattern": {"v_proj": 1e38}}),
            pool.submit(upload_with, world, "big-values", None, 1e20),
        ]
        attack_results = [f.result() for f in attacks]
        upload_results = [f.result() for f in uploads]
        during_texts = during.result()
    after = victims(world, 10)
    poisoned = sum(text != clean[i % 2] for i, text in enumerate(during_texts + after))
    assert poisoned == 0, f"{poisoned} of {len(during_texts + after)} victim requests changed"
    for response in attack_results:
        error = assert_error(response, 400, "weight must be a finite number within ±100")
        assert error["param"] == "adapters"
    for response, words in zip(
        upload_results,
        ["lora_alpha must be a positive number of at most 65504",
         "lora_alpha must be a positive number of at most 65504",
         "alpha_pattern['v_proj'] must be a positive number of at most 65504",
         "v_proj.lora_B.weight"],
        strict=True,
    ):  # fmt: skip
        assert_error(response, 400, words)
    # Weights a real adapter has stay accepted, negation (task arithmetic) included.
    response = mix_attack(world, -2.0)
    assert response.status_code == 200, response.text
    assert put(world, "acme", "fine", 5).status_code == 201


def test_generate_route_bounds_merged_adapter_weights(world: World) -> None:
    body = {
        "inputs": "t5 t6 t7",
        "parameters": {
            "max_new_tokens": 2,
            "merged_adapters": {"ids": ["tiny-a"], "weights": [1e38], "merge_strategy": "linear"},
        },
    }
    response = call(world.url, "acme-app", "POST", "/generate", json=body)
    error = assert_error(response, 400, "within ±100")
    assert error["param"] == "merged_adapters"
