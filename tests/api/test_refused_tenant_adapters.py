"""A tenant's adapter refused at start (here: rank 16 in a store served with --max-lora-rank 8)
follows the namespace rules of servable adapters: its owner sees the refusal under the name it
uses, another tenant sees nothing (the same 404 as a name that does not exist), and an admin
sees it as ``tenant/name``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from adapter_files import rank_16
from tenant_world import World, call, start_world, tenant_config

from loraplex.config import Config

REFUSED = "q3-layoffs"


@pytest.fixture(scope="module")
def world(
    server_factory: Callable[[Config], str],
    tiny_config: Config,
    tiny_model_dir: Path,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    """acme's ``q3-layoffs`` was stored under a larger --max-lora-rank; this server refuses it."""
    config = tenant_config(
        tiny_config, tmp_path_factory.mktemp("refused-tenants"), tiny_adapters_dir
    )
    folder = rank_16(tiny_model_dir, Path(config.lora.adapters_dir or "") / f"acme@{REFUSED}")
    (folder / "loraplex.json").write_text(json.dumps({"owner": "acme", "public": False}))
    return start_world(server_factory, config, tiny_adapters_dir)


def refused_ids(world: World, who: str) -> list[str]:
    listing = call(world.url, who, "GET", "/v1/adapters")
    assert listing.status_code == 200
    return [entry["id"] for entry in listing.json()["refused"]]


def complete(world: World, who: str, model: str) -> tuple[int, dict]:
    payload = {"model": model, "prompt": "Hello", "max_tokens": 2}
    response = call(world.url, who, "POST", "/v1/completions", json=payload)
    return response.status_code, response.json().get("error", {})


def test_the_owner_sees_its_refusal_under_its_own_name(world: World) -> None:
    assert refused_ids(world, "acme") == [REFUSED]
    for model in (REFUSED, f"acme/{REFUSED}"):
        status, error = complete(world, "acme-app", model)
        assert (status, error["code"]) == (400, "adapter_refused")
        assert "--max-lora-rank" in error["message"]
    card = call(world.url, "acme", "GET", f"/v1/adapters/{REFUSED}")
    assert card.status_code == 400 and card.json()["error"]["code"] == "adapter_refused"
    mix = {"model": "tiny-llama", "prompt": "x", "max_tokens": 2}
    mix["adapters"] = [{"name": REFUSED, "weight": 1.0}]
    assert call(world.url, "acme", "POST", "/v1/completions", json=mix).status_code == 400


def test_another_tenant_learns_nothing_of_it(world: World) -> None:
    assert refused_ids(world, "globex") == []
    listing = call(world.url, "globex", "GET", "/v1/adapters").text
    assert REFUSED not in listing and "acme" not in listing
    for model in (REFUSED, f"acme/{REFUSED}"):
        refused, missing = complete(world, "globex", model), complete(world, "globex", "nobody")
        assert refused[0] == missing[0] == 404
        assert refused[1]["code"] == missing[1]["code"] == "model_not_found"
    for path in (f"/v1/adapters/{REFUSED}", f"/v1/adapters/acme/{REFUSED}"):
        assert call(world.url, "globex", "GET", path).status_code == 404


def test_an_admin_sees_it_as_tenant_slash_name(world: World) -> None:
    assert refused_ids(world, "admin") == [f"acme/{REFUSED}"]
    assert complete(world, "admin", f"acme/{REFUSED}")[0] == 400
    assert complete(world, "admin", REFUSED)[0] == 404  # bare: the admin's own tenant's
