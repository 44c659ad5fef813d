"""Two server processes over one adapter store, as two Kubernetes replicas are: a folder stands in
for the ReadWriteMany volume, a moto server on loopback for the S3-compatible store. An adapter
uploaded through one replica is served by the other; a replace and a delete through either reach
both, with no restart (``--store-poll-s``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.3
CONVERGE_S = 20.0  # far above POLL_S: a loaded CI machine still converges well within it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def start_replica(
    tmp_path: Path, tiny_model_dir: Path
) -> Iterator[Callable[[str, dict[str, str]], str]]:
    """``start(store, env) -> base_url``: a real ``loraplex serve`` process on loopback."""
    procs: list[subprocess.Popen] = []

    def start(store: str, env: dict[str, str]) -> str:
        port = free_port()
        cache = tmp_path / f"cache-{len(procs)}"  # each replica its own cache, as each pod
        args = [
            sys.executable, "-m", "loraplex.cli", "serve",
            "--model", str(tiny_model_dir), "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(port),
            "--adapter-store", store, "--store-poll-s", str(POLL_S),
            "--block-size", "16", "--num-blocks", "64", "--max-model-len", "256",
            "--max-loras", "2", "--max-lora-rank", "8", "--lora-kernel", "torch",
            "--log-level", "warning",
        ]  # fmt: skip
        full_env = {
            **os.environ,
            **env,
            "PYTHONPATH": str(ROOT / "server"),
            "LORAPLEX_CACHE": str(cache),
        }
        log = (tmp_path / f"replica-{len(procs)}.log").open("w")
        procs.append(subprocess.Popen(args, env=full_env, stdout=log, stderr=subprocess.STDOUT))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if procs[-1].poll() is not None:
                pytest.fail(f"replica exited: {(tmp_path / log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        pytest.fail("replica did not come up within 120 s")

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def second_adapter(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """Another version of an adapter on the tiny model (other random A and B)."""
    from builders import save_adapter

    return save_adapter(
        tiny_model_dir,
        tmp_path / "v2",
        seed=7,
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
    )


def upload(url: str, folder: Path, name: str, replace: bool = False) -> dict:
    files = {
        "config": (CONFIG_FILE, (folder / CONFIG_FILE).read_bytes()),
        "weights": (WEIGHTS_FILE, (folder / WEIGHTS_FILE).read_bytes()),
    }
    data = {"name": name, "replace": "true" if replace else "false"}
    response = httpx.post(f"{url}/v1/adapters", data=data, files=files, timeout=60)
    assert response.status_code in (200, 201), response.text
    return response.json()


def complete(url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "the cat sat on", "max_tokens": 6, "temperature": 0}
    return httpx.post(f"{url}/v1/completions", json=body, timeout=60)


def version_on(url: str, name: str) -> str | None:
    response = httpx.get(f"{url}/v1/adapters/{name}", timeout=10)
    return response.json()["version"] if response.status_code == 200 else None


def wait_for(check: Callable[[], bool], what: str) -> float:
    """Seconds until ``check()`` held; fails after CONVERGE_S."""
    start = time.monotonic()
    while time.monotonic() - start < CONVERGE_S:
        if check():
            return time.monotonic() - start
        time.sleep(0.1)
    pytest.fail(f"{what} not within {CONVERGE_S} s")


def run_scenario(a: str, b: str, v1: Path, v2: Path) -> None:
    card = upload(a, v1, "shared")
    wait_for(lambda: version_on(b, "shared") == card["version"], "the upload reaching replica B")
    through_a, through_b = complete(a, "shared"), complete(b, "shared")
    assert through_a.status_code == through_b.status_code == 200, through_b.text
    assert through_b.json()["choices"][0]["text"] == through_a.json()["choices"][0]["text"]

    replaced = upload(b, v2, "shared", replace=True)
    assert replaced["version"] != card["version"]
    wait_for(lambda: version_on(a, "shared") == replaced["version"], "the replace reaching A")
    after_a, after_b = complete(a, "shared"), complete(b, "shared")
    assert after_a.json()["choices"][0]["text"] == after_b.json()["choices"][0]["text"]

    assert httpx.delete(f"{a}/v1/adapters/shared", timeout=30).status_code == 200
    wait_for(lambda: version_on(b, "shared") is None, "the delete reaching B")
    assert complete(b, "shared").status_code == 404
    names = [c["id"] for c in httpx.get(f"{b}/v1/adapters", timeout=10).json()["data"]]
    assert "shared" not in names


def test_replicas_share_a_folder_store(
    start_replica: Callable[[str, dict[str, str]], str],
    tmp_path: Path,
    tiny_adapters_dir: Path,
    tiny_adapter_name: str,
    second_adapter: Path,
) -> None:
    store = str(tmp_path / "rwx-volume")
    a, b = start_replica(store, {}), start_replica(store, {})
    run_scenario(a, b, tiny_adapters_dir / tiny_adapter_name, second_adapter)


def test_replicas_share_an_s3_store(
    start_replica: Callable[[str, dict[str, str]], str],
    tmp_path: Path,
    tiny_adapters_dir: Path,
    tiny_adapter_name: str,
    second_adapter: Path,
) -> None:
    moto_server = pytest.importorskip("moto.server", reason="needs 'moto[server]' and boto3")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_CONFIG_FILE": str(tmp_path / "none"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        }
        bucket = f"loraplex-{uuid.uuid4().hex[:10]}"
        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        ).create_bucket(Bucket=bucket)
        store = f"s3://{bucket}/adapters"
        a, b = start_replica(store, env), start_replica(store, env)
        run_scenario(a, b, tiny_adapters_dir / tiny_adapter_name, second_adapter)
    finally:
        server.stop()
