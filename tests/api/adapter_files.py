"""Helpers for the adapter API tests: a server on a fresh copy of the tiny adapter store (and the
``env`` fixture serving one), the tiny adapter's files corrupted one way at a time, archives
holding them, and HTTP shortcuts (also for the other API tests: :func:`sse_events`)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load, save

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE
from loraplex.api import upload as upload_module
from loraplex.config import Config

LAYER = "base_model.model.model.layers.0.self_attn"
PROMPT = "The capital of France is"
GREEDY = {"temperature": 0.0, "max_tokens": 8, "ignore_eos": True}


@dataclasses.dataclass(frozen=True)
class AdapterFiles:
    """``adapter_config.json`` and ``adapter_model.safetensors`` as bytes."""

    config: bytes
    weights: bytes

    @classmethod
    def read(cls, folder: Path) -> AdapterFiles:
        return cls((folder / CONFIG_FILE).read_bytes(), (folder / WEIGHTS_FILE).read_bytes())

    def with_config(self, **changes: object) -> AdapterFiles:
        config = json.loads(self.config) | changes
        return dataclasses.replace(self, config=json.dumps(config).encode())

    def with_tensors(self, **changes: torch.Tensor | None) -> AdapterFiles:
        """Replace (None: drop) tensors; keys are relative to LAYER with '__' for '.'."""
        tensors = load(self.weights)
        for short, tensor in changes.items():
            key = f"{LAYER}.{short.replace('__', '.')}"
            if tensor is None:
                tensors.pop(key)
            else:
                tensors[key] = tensor
        return dataclasses.replace(self, weights=save(tensors))

    def perturbed(self, seed: int) -> AdapterFiles:
        """Same shapes, new random values: another adapter (another version) of the same kind."""
        generator = torch.Generator().manual_seed(seed)
        # Sorted: the order load() returns tensors in varies, and with it what each one draws.
        shapes = {k: v.shape for k, v in sorted(load(self.weights).items())}
        tensors = {k: torch.randn(shape, generator=generator) * 0.5 for k, shape in shapes.items()}
        return dataclasses.replace(self, weights=save(tensors))

    def members(self, folder: str = "") -> dict[str, bytes]:
        prefix = f"{folder}/" if folder else ""
        return {prefix + CONFIG_FILE: self.config, prefix + WEIGHTS_FILE: self.weights}


def rank_16(tiny_model_dir: Path, folder: Path) -> Path:
    """A real PEFT adapter of rank 16 (the tiny server's --max-lora-rank is 8)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(base, LoraConfig(r=16, target_modules=["q_proj"])).save_pretrained(folder)
    return folder


def raw_safetensors(header: dict, length: int | None = None) -> bytes:
    body = json.dumps(header).encode()
    return (len(body) if length is None else length).to_bytes(8, "little") + body


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16  # S_IFLNK
            archive.writestr(info, target)
    return out.getvalue()


def tar_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return out.getvalue()


@dataclasses.dataclass(frozen=True)
class Env:
    """A live server on a copy of the tiny adapter store (``store``); ``roots`` is its only
    ``--adapter-roots`` folder, ``outside`` is not; uploads stage in ``tmp``."""

    url: str
    store: Path
    roots: Path
    outside: Path
    tmp: Path
    files: AdapterFiles

    def state(self) -> tuple[list[str], list[str], list[str]]:
        """Registered names, store entries, leftover upload folders: all unchanged by a refusal."""
        names = [a["name"] for a in get(self.url, "/v1/adapters").json()["data"]]
        return names, sorted(p.name for p in self.store.iterdir()), sorted(os.listdir(self.tmp))


def start_env(
    start: Callable[[Config], str], config: Config, adapters: Path, root: Path, **lora: object
) -> Env:
    """Copy the store and an adapter under roots/ and outside/; serve them with ``lora`` set."""
    store = Path(shutil.copytree(adapters, root / "store"))
    source = next(p for p in store.iterdir() if p.is_dir())
    roots = root / "roots"
    shutil.copytree(source, roots / "in-root")
    shutil.copytree(source, root / "outside" / "x")
    (root / "tmp").mkdir()
    lora_config = dataclasses.replace(
        config.lora, adapters_dir=str(store), adapter_roots=(str(roots),), **lora
    )
    url = start(dataclasses.replace(config, lora=lora_config))
    return Env(url, store, roots, root / "outside", root / "tmp", AdapterFiles.read(source))


def env_fixture(folder: str, **lora: object):
    """A module-scoped ``env`` fixture: :func:`start_env` (with ``lora`` set) in a fresh temp
    folder named ``folder``, with uploads staging in its ``tmp``. Use as ``env = env_fixture(...)``.
    """

    @pytest.fixture(scope="module")
    def env(
        server_factory: Callable[[Config], str],
        tiny_config: Config,
        tiny_adapters_dir: Path,
        tmp_path_factory: pytest.TempPathFactory,
    ) -> Iterator[Env]:
        root = tmp_path_factory.mktemp(folder)
        env = start_env(server_factory, tiny_config, tiny_adapters_dir, root, **lora)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(upload_module, "UPLOAD_TMP_DIR", str(env.tmp))
            yield env

    return env


def get(url: str, path: str) -> httpx.Response:
    return httpx.get(url + path, timeout=60)


def post(url: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(url + path, timeout=120, **kwargs)  # type: ignore[arg-type]


def upload(
    url: str,
    name: str | None,
    files: AdapterFiles | None = None,
    archive: bytes | None = None,
    weights_name: str = WEIGHTS_FILE,
    params: dict | None = None,
    **fields: str,
) -> httpx.Response:
    """``POST /v1/adapters`` as multipart: text fields first, then the file parts."""
    data = fields if name is None else {"name": name, **fields}
    parts: list[tuple[str, tuple[str, bytes, str]]] = []
    if files is not None:
        parts.append(("config", (CONFIG_FILE, files.config, "application/json")))
        parts.append(("weights", (weights_name, files.weights, "application/octet-stream")))
    if archive is not None:
        parts.append(("archive", ("adapter.archive", archive, "application/octet-stream")))
    return post(url, "/v1/adapters", data=data, files=parts, params=params)


def complete(url: str, model: str, **extra: object) -> httpx.Response:
    return post(url, "/v1/completions", json={"model": model, "prompt": PROMPT, **GREEDY, **extra})


def text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def sse_events(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE body; asserts every event is ``data: ...`` + blank line."""
    body = response.text
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: ") :] for e in events]


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    """Status, the one OpenAI error shape, and a message that names the problem."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    for word in words:
        assert word in body["error"]["message"], (word, body)
    return body["error"]
