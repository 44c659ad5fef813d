"""Two replicas share one S3-compatible adapter store (a real moto server on loopback)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE
from loraplex.config import Config


@pytest.fixture
def s3_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server", reason="needs 'moto[server]' and boto3")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "LORAPLEX_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(key, value)
    bucket = f"loraplex-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/adapters"
    server.stop()


def complete(url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "The capital of France", "max_tokens": 6, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def test_replicas_share_an_s3_store(
    s3_url: str,
    tiny_config: Config,
    tiny_adapters_dir: Path,
    tiny_adapter_name: str,
    server_factory: Callable[..., str],
) -> None:
    lora = dataclasses.replace(tiny_config.lora, adapters_dir=None, adapter_store=s3_url)
    config = dataclasses.replace(tiny_config, lora=lora)
    first = server_factory(config)
    assert httpx.get(f"{first}/v1/adapters").json()["data"] == []
    folder = tiny_adapters_dir / tiny_adapter_name
    files = {
        "config": (CONFIG_FILE, (folder / CONFIG_FILE).read_bytes()),
        "weights": (WEIGHTS_FILE, (folder / WEIGHTS_FILE).read_bytes()),
    }
    created = httpx.post(f"{first}/v1/adapters", data={"name": "shared"}, files=files, timeout=60)
    assert created.status_code == 201, created.text
    expected = complete(first, "shared")
    assert expected.status_code == 200
    # A second replica started on the same bucket serves the adapter from the store.
    second = server_factory(config)
    names = [card["id"] for card in httpx.get(f"{second}/v1/adapters").json()["data"]]
    assert names == ["shared"]
    got = complete(second, "shared")
    assert got.json()["choices"][0]["text"] == expected.json()["choices"][0]["text"]
    assert httpx.delete(f"{first}/v1/adapters/shared").status_code == 200
    third = server_factory(config)
    assert complete(third, "shared").status_code == 404
