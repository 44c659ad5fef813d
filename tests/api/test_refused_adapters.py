"""Adapters that could not be taken at start (rank above --max-lora-rank, another base model, a
bad file, a bad --lora-modules entry) are listed with the reason by ``GET /v1/adapters``, and a
request naming one gets a 400 that says why and which option to change (not a bare 404)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from adapter_files import AdapterFiles, rank_16

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE
from loraplex.config import Config


def write(folder: Path, files: AdapterFiles) -> Path:
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_bytes(files.config)
    (folder / WEIGHTS_FILE).write_bytes(files.weights)
    return folder


@pytest.fixture(scope="module")
def url(
    server_factory: Callable[..., str],
    tiny_config: Config,
    tiny_model_dir: Path,
    tiny_adapters_dir: Path,
    tiny_adapter_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    root = tmp_path_factory.mktemp("refused")
    store = root / "store"
    shutil.copytree(tiny_adapters_dir, store)
    good = AdapterFiles.read(store / tiny_adapter_name)
    rank_16(tiny_model_dir, store / "wide")
    write(store / "other-base", good.with_config(base_model_name_or_path="acme/other-model"))
    write(store / "broken", AdapterFiles(good.config, b"not a safetensors file"))
    module = rank_16(tiny_model_dir, root / "module")
    lora = dataclasses.replace(
        tiny_config.lora, adapters_dir=str(store), lora_modules=(("extra", str(module)),)
    )
    return server_factory(dataclasses.replace(tiny_config, lora=lora))


def test_refused_adapters_are_listed_with_their_reason(url: str, tiny_adapter_name: str) -> None:
    listing = httpx.get(f"{url}/v1/adapters").json()
    assert [card["id"] for card in listing["data"]] == [tiny_adapter_name]  # still served
    refused = {entry["id"]: entry for entry in listing["refused"]}
    assert set(refused) == {"wide", "other-base", "broken", "extra"}
    assert all(entry["status"] == "refused" for entry in refused.values())
    assert "--max-lora-rank" in refused["wide"]["reason"]
    assert "acme/other-model" in refused["other-base"]["reason"]
    assert "--allow-base-mismatch" in refused["other-base"]["reason"]
    assert "adapter store" in refused["broken"]["reason"]
    assert "--max-lora-rank" in refused["extra"]["reason"]
    assert "--lora-modules extra=" in refused["extra"]["reason"]


@pytest.mark.parametrize(
    ("name", "hint"), [("wide", "--max-lora-rank"), ("other-base", "--allow-base-mismatch")]
)
def test_a_request_for_a_refused_adapter_says_why(url: str, name: str, hint: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=name, prompt="Hello", max_tokens=2)
    error = refused.value.body
    assert error["code"] == "adapter_refused" and error["param"] == "model"
    assert "refused when the server started" in error["message"] and hint in error["message"]
    card = httpx.get(f"{url}/v1/adapters/{name}")
    assert card.status_code == 400 and hint in card.json()["error"]["message"]


def test_an_unknown_name_is_still_a_404(url: str) -> None:
    body = {"model": "nobody", "prompt": "Hello", "max_tokens": 2}
    response = httpx.post(f"{url}/v1/completions", json=body)
    assert response.status_code == 404
