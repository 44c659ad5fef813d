"""The tenants' test world: four keys of three tenants (one admin, two users, one inference key;
two of them stored hashed), a keyed live server on a fresh store copy, and HTTP/openai shortcuts
that send a given caller's key."""

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
    "scraper": "sk-ops-metrics-01",  # ops, role metrics (reads /metrics, nothing else)
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
        {"key": KEYS["scraper"], "tenant": "ops", "role": "metrics"},
    ]
    path.write_text(json.dumps({"keys": entries}))
    return path


def tenant_config(
    tiny_config: Config,
    root: Path,
    tiny_adapters_dir: Path,
    server_options: dict | None = None,
    lora_options: dict | None = None,
) -> Config:
    """The tiny config with the keys above, a fresh store copy and an adapter root under
    ``root``; ``server_options``/``lora_options`` replace further fields of those sections."""
    store = Path(shutil.copytree(tiny_adapters_dir, root / "store"))
    roots = root / "roots"
    shutil.copytree(store / "tiny-a", roots / "in-root")
    keys = load_api_keys_file(keys_file(root))
    server = dataclasses.replace(tiny_config.server, api_keys=keys, **(server_options or {}))
    lora = dataclasses.replace(
        tiny_config.lora,
        adapters_dir=str(store),
        adapter_roots=(str(roots),),
        **(lora_options or {}),
    )
    return dataclasses.replace(tiny_config, server=server, lora=lora)


def world_fixture(folder: str, **server_options: object):
    """A module-scoped ``world`` fixture: a keyed server on a fresh store copy in a temp folder
    named ``folder``; acme and globex each upload their own ``support`` (other weights), acme
    also ``acme-only`` and ``acme-doomed``. Use as ``world = world_fixture(...)``;
    ``server_options`` replace fields of the server config."""

    @pytest.fixture(scope="module")
    def world(
        server_factory: Callable[[Config], str],
        tiny_config: Config,
        tiny_adapters_dir: Path,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> World:
        root = tmp_path_factory.mktemp(folder)
        config = tenant_config(tiny_config, root, tiny_adapters_dir, server_options)
        return start_world(server_factory, config, tiny_adapters_dir)

    return world


def start_world(
    server_factory: Callable[[Config], str], config: Config, tiny_adapters_dir: Path
) -> World:
    """Serve ``config`` (see :func:`tenant_config`) and make the uploads :func:`world_fixture`
    describes."""
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
