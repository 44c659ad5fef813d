"""Issue 10, item 8: pins are capped by --max-pinned-loras (default --max-loras // 2): past it a
pinned upload is a 409 naming the option and stores nothing, however many arrive at once, and
the other adapters keep their device slots."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from adapter_files import Env, assert_error, complete, env_fixture, get, text, upload
from attack_helpers import bystanders

env = env_fixture("pins", max_loras=4)  # pins capped at 4 // 2 = 2


def pinned_names(env: Env) -> list[str]:
    cards = get(env.url, "/v1/adapters").json()["data"]
    return sorted(c["name"] for c in cards if c["location"] and c["location"]["pinned"])


def test_concurrent_pinned_uploads_stop_at_the_cap(
    env: Env, base_name: str, tiny_adapter_name: str
) -> None:
    others = {f"free-{i}": env.files.perturbed(seed=40 + i) for i in range(2)}
    for name, files in others.items():
        assert upload(env.url, name, files=files).status_code == 201
    models = [base_name, tiny_adapter_name, *others]
    expected = {m: text(complete(env.url, m)) for m in models}
    names_before, store_before, _ = env.state()

    def pin(i: int) -> httpx.Response:
        return upload(env.url, f"pin-{i}", files=env.files.perturbed(seed=i), pinned="true")

    with bystanders(env.url, expected), ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(pin, range(8)))
    created = sorted(r.json()["name"] for r in responses if r.status_code == 201)
    refused = [r for r in responses if r.status_code != 201]
    assert len(created) == 2 and len(refused) == 6
    for response in refused:
        error = assert_error(response, 409, "--max-pinned-loras", "at most 2")
        assert error["param"] == "pinned" and error["code"] == "limit_reached"
    assert pinned_names(env) == created
    names, store, tmp = env.state()
    assert names == sorted([*names_before, *created]) and tmp == []
    assert store == sorted([*store_before, *created])  # the refused ones stored nothing

    # Two slots are left for everyone else: a mix of four unpinned adapters still runs right.
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda m: text(complete(env.url, m)), models)) == list(
            expected.values()
        )
    # Replacing a pinned adapter keeps its pin (no new one); a third name is still refused.
    again = upload(env.url, created[0], files=env.files, pinned="true", replace="true")
    assert again.status_code == 201, again.text
    assert_error(pin(99), 409, "--max-pinned-loras")
    # A deleted pin frees its place.
    assert httpx.delete(f"{env.url}/v1/adapters/{created[1]}", timeout=60).status_code == 200
    assert pin(100).status_code == 201
    assert pinned_names(env) == sorted([created[0], "pin-100"])
