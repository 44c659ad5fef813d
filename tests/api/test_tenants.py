"""Tenants through a live server and the real openai client: two tenants' namesake adapters
with their own weights, what each one lists, privacy kept by a second server over the same
store, and prefix-cache isolation. (Who may call what: test_tenant_matrix.py.)"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from tenant_world import World, call, client, greedy, world_fixture

from loraplex.config import Config

world = world_fixture("tenants")


def test_namesakes_have_their_own_weights(world: World) -> None:
    """acme's and globex's ``support`` differ (other weights, other greedy text); each tenant
    gets its own, and an admin reaches each as tenant/name."""
    assert world.texts["acme"] != world.texts["globex"]
    assert greedy(world.url, "acme-app", "support") == world.texts["acme"]  # acme's other key
    assert greedy(world.url, "admin", "acme/support") == world.texts["acme"]
    assert greedy(world.url, "admin", "globex/support") == world.texts["globex"]


def listed(world: World, who: str) -> tuple[list[str], list[str]]:
    models = [m.id for m in client(world.url, who).models.list().data]
    adapters = call(world.url, who, "GET", "/v1/adapters").json()["data"]
    return models, sorted(a["id"] for a in adapters)


def test_lists_show_own_and_public_only(world: World) -> None:
    acme_models, acme_adapters = listed(world, "acme")
    globex_models, globex_adapters = listed(world, "globex")
    assert {"support", "acme-only", "tiny-a"} <= set(acme_adapters)
    assert "acme-only" not in globex_adapters and not any("/" in a for a in globex_adapters)
    assert acme_models[0] == "tiny-llama" and set(acme_models[1:]) == set(acme_adapters)
    assert set(globex_models[1:]) == set(globex_adapters)
    _, admin_adapters = listed(world, "admin")
    assert {"acme/support", "globex/support", "acme/acme-only", "tiny-a"} <= set(admin_adapters)
    card = call(world.url, "acme", "GET", "/v1/adapters/support").json()
    assert (card["id"], card["name"], card["owner"], card["public"]) == (
        "support",
        "support",
        "acme",
        False,
    )


def test_a_restarted_server_keeps_owners_and_privacy(
    world: World, server_factory: Callable[[Config], str]
) -> None:
    """A second server over the same store folder: ownership comes back from the store's
    metadata, so each tenant still gets its own ``support`` and nothing of the other's."""
    stored = {p.name for p in world.store.iterdir()}
    assert {"acme@support", "globex@support", "acme@acme-only", "tiny-a"} <= stored
    meta = json.loads((world.store / "acme@support" / "loraplex.json").read_text())
    assert (meta["owner"], meta["public"]) == ("acme", False)
    url = server_factory(world.config)
    assert greedy(url, "acme", "support") == world.texts["acme"]
    assert greedy(url, "globex", "support") == world.texts["globex"]
    again = dataclasses.replace(world, url=url)
    payload = {"model": "acme-only", "prompt": "x", "max_tokens": 2}
    assert call(url, "globex", "POST", "/v1/completions", json=payload).status_code == 404
    assert call(url, "globex", "GET", "/v1/adapters/acme-only").status_code == 404
    assert listed(again, "globex") == listed(world, "globex")
    assert listed(again, "acme") == listed(world, "acme")


def test_prefix_cache_is_shared_within_a_tenant_only(world: World) -> None:
    """cached_tokens > 0 for the same tenant's repeat, 0 for another tenant's same prompt; a
    cache_salt a client picks only splits its own tenant's cache further."""
    prompt = "A tenant's private system prompt that nobody else may probe for. " * 4

    def cached(who: str, salt: str | None = None) -> int:
        extra = {"ignore_eos": True} | ({"cache_salt": salt} if salt else {})
        response = client(world.url, who).completions.create(
            model="tiny-llama", prompt=prompt, temperature=0.0, max_tokens=2, extra_body=extra
        )
        assert response.usage is not None and response.usage.prompt_tokens_details is not None
        return response.usage.prompt_tokens_details.cached_tokens or 0

    assert cached("acme") == 0
    assert cached("acme-app") > 0  # another key of the same tenant shares it
    assert cached("globex") == 0
    assert cached("globex", salt=json.dumps(["acme", None])) == 0  # no salt reaches acme's
    assert cached("globex") > 0
    assert cached("acme", salt="s1") == 0
    assert cached("acme", salt="s1") > 0
