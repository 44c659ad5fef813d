"""Adapter lifecycle over HTTP on a live server: upload, use, replace, delete; archives; loading
from --adapter-roots; vLLM's aliases; where an adapter lives; merge; per-request combinations;
invalid uploads during live traffic. Every test runs on a fresh copy of the tiny adapter store."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from adapter_files import (
    Env,
    assert_error,
    complete,
    env_fixture,
    get,
    post,
    tar_bytes,
    text,
    upload,
    zip_bytes,
)

from loraplex.config import Config

env = env_fixture("api")


@pytest.fixture(scope="module")
def base(tiny_config: Config) -> str:
    assert tiny_config.model.served_model_name is not None
    return tiny_config.model.served_model_name


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def delete(env: Env, name: str) -> httpx.Response:
    return httpx.delete(f"{env.url}/v1/adapters/{name}", timeout=60)


def test_list_shows_cards_with_location(env: Env, tiny_adapter_name: str) -> None:
    body = get(env.url, "/v1/adapters").json()
    assert body["object"] == "list"
    [card] = body["data"]
    assert card["id"] == card["name"] == tiny_adapter_name
    assert card["object"] == "adapter"
    assert card["version"] == sha256(env.files.weights)
    assert (card["rank"], card["alpha"]) == (4, 8.0)
    assert card["location"]["store"] is True


def test_upload_use_replace_delete(env: Env, base: str, tiny_adapter_name: str) -> None:
    url, files = env.url, env.files
    base_text = text(complete(url, base))
    response = upload(url, "life", files=files, description="first")
    assert response.status_code == 201, response.text
    card = response.json()
    assert (card["id"], card["name"], card["object"]) == ("life", "life", "adapter")
    assert card["version"] == sha256(files.weights)
    assert (card["rank"], card["alpha"], card["size_bytes"]) == (4, 8.0, len(files.weights))
    assert set(card["target_modules"]) == {"q_proj", "v_proj"}
    assert card["description"] == "first" and isinstance(card["created"], int)
    assert card["location"]["host_memory"] is True
    assert "life" in [m["id"] for m in get(url, "/v1/models").json()["data"]]
    assert (env.store / "life").is_dir()
    first = text(complete(url, "life"))
    assert first != base_text
    assert first == text(complete(url, tiny_adapter_name))  # the same weights

    other = files.perturbed(seed=5)
    before = env.state()
    error = assert_error(upload(url, "life", files=other), 409, "'life' exists")
    assert error["code"] == "adapter_exists"
    assert env.state() == before

    replaced = upload(url, "life", files=other, replace="true")
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["version"] == sha256(other.weights) != card["version"]
    assert text(complete(url, "life")) != first
    back = upload(url, "life", files=files, params={"replace": "true"})  # the query flag
    assert back.json()["version"] == card["version"]
    assert text(complete(url, "life")) == first

    assert delete(env, "life").json() == {"id": "life", "object": "adapter", "deleted": True}
    assert_error(complete(url, "life"), 404, "life")
    assert_error(get(url, "/v1/adapters/life"), 404, "life")
    assert_error(delete(env, "life"), 404, "life")
    assert not (env.store / "life").exists()
    assert "life" not in [m["id"] for m in get(url, "/v1/models").json()["data"]]


@pytest.mark.parametrize("folder", ["", "my-adapter"], ids=["top-level", "in-a-folder"])
@pytest.mark.parametrize("pack", [zip_bytes, tar_bytes], ids=["zip", "tar.gz"])
def test_archive_upload(env: Env, tiny_adapter_name: str, pack: Callable, folder: str) -> None:
    name = f"arch-{pack.__name__}-{len(folder)}"
    response = upload(env.url, name, archive=pack(env.files.members(folder)))
    assert response.status_code == 201, response.text
    assert response.json()["version"] == sha256(env.files.weights)
    assert text(complete(env.url, name)) == text(complete(env.url, tiny_adapter_name))
    assert delete(env, name).status_code == 200
    assert env.state()[2] == []  # the staging folder is gone


def test_load_from_adapter_roots(env: Env, tiny_adapter_name: str) -> None:
    def load(name: str, path: object) -> httpx.Response:
        return post(env.url, "/v1/adapters/load", json={"name": name, "path": str(path)})

    response = load("rooted", env.roots / "in-root")
    assert response.status_code == 201, response.text
    assert response.json()["version"] == sha256(env.files.weights)
    assert text(complete(env.url, "rooted")) == text(complete(env.url, tiny_adapter_name))
    assert_error(load("rooted", env.roots / "in-root"), 409, "exists")

    (env.roots / "sneaky").symlink_to(env.outside / "x")
    before = env.state()
    for path in (env.outside / "x", env.roots / ".." / "outside" / "x", env.roots / "sneaky"):
        error = assert_error(load("outside", path), 403, "--adapter-roots")
        assert error["type"] == "permission_error"
    assert_error(load("../x", env.roots / "in-root"), 400, "invalid adapter name")
    assert_error(load("missing", env.roots / "nothing-here"), 400, "not an adapter folder")
    assert env.state() == before
    assert delete(env, "rooted").status_code == 200


def test_vllm_aliases(env: Env) -> None:
    path = str(env.roots / "in-root")
    response = post(env.url, "/v1/load_lora_adapter", json={"lora_name": "vl", "lora_path": path})
    assert response.status_code == 200, response.text
    assert "vl" in response.text
    text(complete(env.url, "vl"))
    outside = {"lora_name": "vl2", "lora_path": str(env.outside / "x")}
    assert_error(post(env.url, "/v1/load_lora_adapter", json=outside), 403, "--adapter-roots")
    response = post(env.url, "/v1/unload_lora_adapter", json={"lora_name": "vl", "lora_int_id": 1})
    assert response.status_code == 200, response.text
    assert_error(complete(env.url, "vl"), 404, "vl")
    assert_error(post(env.url, "/v1/unload_lora_adapter", json={"lora_name": "vl"}), 404, "vl")


def test_card_shows_where_the_adapter_is(env: Env) -> None:
    assert upload(env.url, "where", files=env.files.perturbed(seed=3)).status_code == 201
    card = get(env.url, "/v1/adapters/where").json()
    assert card["base_format"] == "float32"  # the base it was checked against
    location = card["location"]
    assert location == {
        "device_slot": None,
        "host_memory": True,
        "store": True,
        "merged": False,
        "merged_bytes": 0,
        "pinned": False,
    }
    text(complete(env.url, "where"))
    location = get(env.url, "/v1/adapters/where").json()["location"]
    assert isinstance(location["device_slot"], int) and location["host_memory"] is True
    pinned = upload(env.url, "pinned", files=env.files.perturbed(seed=4), pinned="true")
    assert pinned.json()["pinned"] is True and pinned.json()["location"]["pinned"] is True
    assert delete(env, "pinned").status_code == 200
    assert delete(env, "where").status_code == 200


def test_merge_matches_dynamic(env: Env, base: str, tiny_adapter_name: str) -> None:
    assert upload(env.url, "tenant", files=env.files.perturbed(seed=7)).status_code == 201
    dynamic = text(complete(env.url, "tenant"))
    others = {m: text(complete(env.url, m)) for m in (base, tiny_adapter_name)}
    merged = post(env.url, "/v1/adapters/tenant/merge")
    assert merged.status_code == 200, merged.text
    assert merged.json()["location"]["merged"] is True
    assert merged.json()["location"]["merged_bytes"] > 0
    assert text(complete(env.url, "tenant")) == dynamic
    assert {m: text(complete(env.url, m)) for m in others} == others  # the rest is unaffected
    unmerged = post(env.url, "/v1/adapters/tenant/unmerge")
    assert unmerged.status_code == 200, unmerged.text
    assert unmerged.json()["location"]["merged"] is False
    assert unmerged.json()["location"]["merged_bytes"] == 0  # nothing ran on it: dropped
    assert text(complete(env.url, "tenant")) == dynamic
    assert_error(post(env.url, "/v1/adapters/nope/merge"), 404, "nope")
    assert delete(env, "tenant").status_code == 200


def test_combination_of_adapters(env: Env, base: str, tiny_adapter_name: str) -> None:
    a = tiny_adapter_name
    assert upload(env.url, "mix-b", files=env.files.perturbed(seed=11)).status_code == 201
    alone = text(complete(env.url, a))
    mix = [{"name": a, "weight": 0.7}, {"name": "mix-b", "weight": 0.3}]
    response = complete(env.url, base, adapters=mix)
    assert response.json()["model"] == base
    assert text(response) != alone
    assert text(complete(env.url, base, adapters=[{"name": a, "weight": 1.0}])) == alone

    error = assert_error(complete(env.url, a, adapters=mix), 400, "base model")
    assert error["param"] == "adapters"
    assert_error(complete(env.url, base, adapters=[]), 400, "1 to 8")
    assert_error(complete(env.url, base, adapters=[mix[0]] * 9), 400, "1 to 8")
    unknown = assert_error(complete(env.url, base, adapters=[{"name": "nope", "weight": 1}]), 404)
    assert unknown["param"] == "adapters" and "nope" in unknown["message"]
    for weight in (b"NaN", b"Infinity", b"1e999"):
        raw = b'{"model": "%s", "prompt": "x", "adapters": [{"name": "%s", "weight": %s}]}'
        body = raw % (base.encode(), a.encode(), weight)
        headers = {"Content-Type": "application/json"}
        response = post(env.url, "/v1/completions", content=body, headers=headers)
        assert_error(response, 400, "finite")
    assert delete(env, "mix-b").status_code == 200


def test_delete_lets_running_requests_finish(env: Env) -> None:
    assert upload(env.url, "doomed", files=env.files.perturbed(seed=9)).status_code == 201
    expected = text(complete(env.url, "doomed", max_tokens=200))
    payload = {"model": "doomed", "prompt": "The capital of France is", "stream": True}
    payload |= {"temperature": 0.0, "max_tokens": 200, "ignore_eos": True}
    with httpx.stream("POST", f"{env.url}/v1/completions", json=payload, timeout=120) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        events = [next(line for line in lines if line.startswith("data: "))]
        assert delete(env, "doomed").status_code == 200  # while the request runs
        events += [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert all("error" not in c for c in chunks), chunks[-1]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected
    assert_error(complete(env.url, "doomed"), 404, "doomed")


def test_invalid_uploads_during_live_traffic(env: Env, base: str, tiny_adapter_name: str) -> None:
    models = [tiny_adapter_name, base, tiny_adapter_name, base]
    expected = {m: text(complete(env.url, m)) for m in set(models)}
    f = env.files
    bad: list[Callable[[], httpx.Response]] = [
        lambda: upload(env.url, "../x", files=f),
        lambda: upload(env.url, "bad", files=f.with_config(r=0)),
        lambda: upload(env.url, "bad", files=f.with_config(use_dora=True)),
        lambda: upload(env.url, "bad", files=f.with_tensors(q_proj__lora_A__weight=torch.ones(1))),
        lambda: upload(env.url, "bad", files=f, weights_name="adapter_model.bin"),
        lambda: upload(env.url, "bad", archive=tar_bytes({"../adapter_config.json": f.config})),
        lambda: upload(env.url, "bad", archive=b"not an archive"),
        lambda: upload(env.url, tiny_adapter_name, files=f),  # exists: 409
    ]
    before = env.state()
    stop = threading.Event()

    def traffic(model: str) -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = []
        while not stop.is_set() or len(results) < 2:
            response = complete(env.url, model)
            ok = response.status_code == 200
            results.append((response.status_code, text(response) if ok else response.text))
        return results

    with ThreadPoolExecutor(len(models)) as pool:
        futures = [pool.submit(traffic, m) for m in models]
        statuses = [bad[i % len(bad)]().status_code for i in range(25)]
        stop.set()
        results = [future.result() for future in futures]
    assert all(400 <= s < 500 for s in statuses), statuses
    for model, runs in zip(models, results, strict=True):
        assert runs and all(run == (200, expected[model]) for run in runs), (model, runs)
    assert env.state() == before
