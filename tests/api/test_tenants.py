"""Keys, tenants and roles through a live server and the real openai client: the whole
key x role x tenant matrix as one table, two tenants' namesake adapters with their own weights,
privacy kept by a second server over the same store, and prefix-cache isolation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from adapter_files import PROMPT, AdapterFiles

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE
from loraplex.api_keys import key_digest, load_api_keys_file
from loraplex.config import Config

KEYS = {
    "admin": "sk-ops-admin-0001",  # tenant ops
    "acme": "sk-acme-user-0001",  # acme, role user
    "acme-app": "sk-acme-app-0001",  # acme, role inference; stored hashed
    "globex": "sk-globex-user-01",  # globex, role user; stored hashed
    "unknown": "sk-nobody-000001",
}
GREEDY = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}


@dataclasses.dataclass(frozen=True)
class World:
    url: str
    config: Config
    store: Path
    files: AdapterFiles
    texts: dict[str, str]  # who -> greedy text of their own "support"


def headers(who: str | None, header: str = "authorization") -> dict[str, str]:
    if who is None:
        return {}
    key = KEYS[who]
    return {"Authorization": f"Bearer {key}"} if header == "authorization" else {"x-api-key": key}


def call(url: str, who: str | None, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(method, url + path, headers=headers(who), timeout=120, **kwargs)


def put(world: World, who: str, name: str, seed: int, **fields: str) -> httpx.Response:
    """Upload the tiny adapter with new random weights (``seed``) as ``who`` (multipart)."""
    files = world.files.perturbed(seed)
    parts = [
        ("config", (CONFIG_FILE, files.config, "application/json")),
        ("weights", (WEIGHTS_FILE, files.weights, "application/octet-stream")),
    ]
    data = {"name": name, **fields}
    return call(world.url, who, "POST", "/v1/adapters", data=data, files=parts)


def client(url: str, who: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=KEYS[who], max_retries=0, timeout=120)


def greedy(url: str, who: str, model: str, prompt: str = PROMPT) -> str:
    return client(url, who).completions.create(model=model, prompt=prompt, **GREEDY).choices[0].text


def keys_file(folder: Path) -> Path:
    path = folder / "keys.json"
    entries = [
        {"key": KEYS["admin"], "tenant": "ops", "role": "admin"},
        {"key": KEYS["acme"], "tenant": "acme", "role": "user"},
        {"sha256": key_digest(KEYS["acme-app"]), "tenant": "acme", "role": "inference"},
        {"sha256": key_digest(KEYS["globex"]).upper(), "tenant": "globex", "role": "user"},
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


def tenant_config(tiny_config: Config, root: Path, tiny_adapters_dir: Path) -> Config:
    store = Path(shutil.copytree(tiny_adapters_dir, root / "store"))
    roots = root / "roots"
    shutil.copytree(store / "tiny-a", roots / "in-root")
    server = dataclasses.replace(tiny_config.server, api_keys=load_api_keys_file(keys_file(root)))
    lora = dataclasses.replace(
        tiny_config.lora, adapters_dir=str(store), adapter_roots=(str(roots),)
    )
    return dataclasses.replace(tiny_config, server=server, lora=lora)


@pytest.fixture(scope="module")
def world(
    server_factory: Callable[[Config], str],
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    """A keyed server; acme and globex each upload their own ``support`` (other weights), acme
    also ``acme-only`` and ``acme-doomed``."""
    root = tmp_path_factory.mktemp("tenants")
    config = tenant_config(tiny_config, root, tiny_adapters_dir)
    url = server_factory(config)
    files = AdapterFiles.read(tiny_adapters_dir / "tiny-a")
    world = World(url, config, Path(config.lora.adapters_dir or ""), files, {})
    for who, name, seed in [
        ("acme", "support", 11),
        ("globex", "support", 22),
        ("acme", "acme-only", 33),
        ("acme", "acme-doomed", 44),
    ]:
        response = put(world, who, name, seed)
        assert response.status_code == 201, response.text
    world.texts.update(acme=greedy(url, "acme", "support"), globex=greedy(url, "globex", "support"))
    return world


# (case, who, method, path, request body or upload, expected status). Uploads are
# ("upload", name, form fields); generation goes through the openai client.
GEN = "generate"
MATRIX = [
    ("no key: models", None, "GET", "/v1/models", None, 401),
    ("no key: completion", None, GEN, "tiny-llama", None, 401),
    ("unknown key: completion", "unknown", GEN, "tiny-llama", None, 401),
    ("no key: adapters", None, "GET", "/v1/adapters", None, 401),
    ("no key: /health", None, "GET", "/health", None, 200),
    ("no key: /metrics", None, "GET", "/metrics", None, 200),
    ("inference (hashed key): base completion", "acme-app", GEN, "tiny-llama", None, 200),
    ("inference: own adapter", "acme-app", GEN, "support", None, 200),
    ("inference: public adapter", "acme-app", GEN, "tiny-a", None, 200),
    ("inference: models", "acme-app", "GET", "/v1/models", None, 200),
    ("inference: list adapters", "acme-app", "GET", "/v1/adapters", None, 403),
    ("inference: upload", "acme-app", "upload", ("app-up", {}), None, 403),
    ("inference: delete own", "acme-app", "DELETE", "/v1/adapters/acme-only", None, 403),
    ("user: own adapter", "acme", GEN, "acme-only", None, 200),
    ("user: own adapter as tenant/name", "acme", GEN, "acme/acme-only", None, 200),
    ("user: list adapters", "acme", "GET", "/v1/adapters", None, 200),
    ("user: get own", "acme", "GET", "/v1/adapters/acme-only", None, 200),
    ("user: upload own", "acme", "upload", ("acme-new", {}), None, 201),
    ("user: upload existing, no replace", "acme", "upload", ("acme-only", {}), None, 409),
    ("user: replace own", "acme", "upload", ("acme-only", {"replace": "true"}), None, 201),
    ("user: upload a public name", "acme", "upload", ("tiny-a", {}), None, 409),
    ("user: upload public=true", "acme", "upload", ("acme-pub", {"public": "true"}), None, 403),
    ("user: upload pinned=true", "acme", "upload", ("acme-pin", {"pinned": "true"}), None, 403),
    ("user: upload as another tenant", "acme", "upload", ("globex/x", {}), None, 403),
    ("user: delete own", "acme", "DELETE", "/v1/adapters/acme-doomed", None, 200),
    ("user: delete public", "acme", "DELETE", "/v1/adapters/tiny-a", None, 403),
    ("user: load from roots", "acme", "POST", "/v1/adapters/load", "in-root", 403),
    ("user: vLLM load", "acme", "POST", "/v1/load_lora_adapter", "in-root", 403),
    ("user: merge own", "acme", "POST", "/v1/adapters/support/merge", None, 403),
    ("other tenant: generate", "globex", GEN, "acme-only", None, 404),
    ("other tenant: generate tenant/name", "globex", GEN, "acme/acme-only", None, 404),
    ("other tenant: in a mix", "globex", "mix", "acme-only", None, 404),
    ("other tenant: get", "globex", "GET", "/v1/adapters/acme-only", None, 404),
    ("other tenant: get tenant/name", "globex", "GET", "/v1/adapters/acme/acme-only", None, 404),
    ("other tenant: delete", "globex", "DELETE", "/v1/adapters/acme-only", None, 404),
    ("other tenant: vLLM unload", "globex", "POST", "/v1/unload_lora_adapter", "acme-only", 404),
    ("other tenant: /generate", "globex", "POST", "/generate", "acme-only", 404),
    ("nobody's: get", "globex", "GET", "/v1/adapters/nothing-here", None, 404),
    ("admin: another tenant's adapter", "admin", GEN, "acme/acme-only", None, 200),
    ("admin: get tenant/name", "admin", "GET", "/v1/adapters/globex/support", None, 200),
    ("admin: bare name of another tenant's", "admin", GEN, "acme-only", None, 404),
    ("admin: merge tenant/name", "admin", "POST", "/v1/adapters/acme/support/merge", None, 200),
    ("admin: unmerge tenant/name", "admin", "POST", "/v1/adapters/acme/support/unmerge", None, 200),
    ("admin: load from roots (public)", "admin", "POST", "/v1/adapters/load", "in-root", 201),
    ("admin: upload public", "admin", "upload", ("ops-pub", {"public": "true"}), None, 201),
    ("admin: upload for a tenant", "admin", "upload", ("globex/from-ops", {}), None, 201),
    ("admin: upload pinned", "admin", "upload", ("ops-pin", {"pinned": "true"}), None, 201),
    ("user: use an admin's public upload", "globex", GEN, "ops-pub", None, 200),
    ("user: take an admin's public name", "globex", "upload", ("ops-pub", {}), None, 409),
    ("user: a tenant's upload by an admin", "globex", GEN, "from-ops", None, 200),
    ("x-api-key: user lists adapters", "globex", "x-api-key", "/v1/adapters", None, 200),
    ("x-api-key: unknown key", "unknown", "x-api-key", "/v1/models", None, 401),
]


def attempt(world: World, who: str | None, method: str, target: object, body: object) -> int:
    url = world.url
    if method == GEN:
        if who is None:  # the SDK always sends a key: send none at all over raw HTTP
            payload = {"model": target, "prompt": PROMPT, "max_tokens": 2}
            return httpx.post(f"{url}/v1/completions", json=payload, timeout=120).status_code
        try:
            client(url, who).completions.create(model=str(target), prompt=PROMPT, max_tokens=2)
        except openai.APIStatusError as exc:  # the SDK parsed the one error shape
            assert isinstance(exc.body, dict) and set(exc.body) >= {"message", "code"}
            return exc.status_code
        return 200
    if method == "mix":
        payload = {"model": "tiny-llama", "prompt": PROMPT, "max_tokens": 2}
        payload["adapters"] = [{"name": target, "weight": 1.0}]
        return call(url, who, "POST", "/v1/completions", json=payload).status_code
    if method == "x-api-key":
        assert who is not None
        response = httpx.get(url + str(target), headers=headers(who, "x-api-key"), timeout=60)
        return response.status_code
    if method == "upload":
        name, fields = target  # type: ignore[misc]
        assert who is not None
        return put(world, who, name, 7, **fields).status_code
    if target == "/generate":
        payload = {"inputs": PROMPT, "parameters": {"adapter_id": body, "max_new_tokens": 2}}
        return call(url, who, "POST", "/generate", json=payload).status_code
    json_body: dict | None = None
    path = str(Path(world.config.lora.adapter_roots[0]) / str(body))
    if target == "/v1/adapters/load":
        json_body = {"name": f"loaded-{who}", "path": path}
    elif target == "/v1/load_lora_adapter":
        json_body = {"lora_name": f"vllm-{who}", "lora_path": path}
    elif target == "/v1/unload_lora_adapter":
        json_body = {"lora_name": body}
    response = call(url, who, method, str(target), json=json_body)
    if response.status_code >= 400:
        error = response.json()["error"]  # the one OpenAI error shape
        assert set(error) == {"message", "type", "param", "code"}
        if response.status_code == 401:
            assert error["code"] == "invalid_api_key"
        if response.status_code == 403:
            assert error["type"] == "permission_error"
    return response.status_code


@pytest.mark.parametrize(
    ("case", "who", "method", "target", "body", "expected"), MATRIX, ids=[row[0] for row in MATRIX]
)
def test_key_role_tenant_matrix(
    world: World,
    case: str,
    who: str | None,
    method: str,
    target: object,
    body: object,
    expected: int,
) -> None:
    got = attempt(world, who, method, target, body)
    print(f"MATRIX | {case} | {expected} | {got}")
    assert got == expected, case


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
    assert attempt(again, "globex", GEN, "acme-only", None) == 404
    assert attempt(again, "globex", "GET", "/v1/adapters/acme-only", None) == 404
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
