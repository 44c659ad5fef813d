"""A server killed (SIGKILL) in the middle of uploads leaves a consistent store.

Real processes: ``loraplex serve`` in a subprocess, killed while replacing an adapter at
staggered moments; after each kill a fresh server must list every adapter exactly once, each
folder complete and matching one of the versions ever uploaded, with no temp folder left over.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from adapter_files import AdapterFiles

from loraplex.adapters.rules import WEIGHTS_FILE
from loraplex.adapters.store.files import DEL, OLD, TMP
from loraplex.adapters.store.local import LocalAdapterStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(model_dir: Path, store: Path, port: int) -> subprocess.Popen:
    args = ["serve", "--model", str(model_dir), "--adapters-dir", str(store), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "loraplex.cli", *args, "--num-blocks", "64", "--max-lora-rank", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start")


def upload(port: int, name: str, files: AdapterFiles) -> None:
    parts = {"config": ("adapter_config.json", files.config), "weights": ("w", files.weights)}
    with contextlib.suppress(httpx.HTTPError):  # the server may die under us: the point
        httpx.post(
            f"http://127.0.0.1:{port}/v1/adapters",
            data={"name": name, "replace": "true"},
            files=parts,
            timeout=5,
        )


@pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL")
def test_kill_during_uploads_keeps_the_store_consistent(
    tiny_model_dir: Path, tiny_adapters_dir: Path, tiny_adapter_name: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    shutil.copytree(tiny_adapters_dir, store)
    original = AdapterFiles.read(store / tiny_adapter_name)
    versions = [original, *(original.perturbed(seed) for seed in range(1, 4))]
    known = {hashlib.sha256(v.weights).hexdigest() for v in versions}
    for attempt, delay in enumerate([0.0, 0.02, 0.05, 0.2]):
        port = free_port()
        proc = start(tiny_model_dir, store, port)
        stop = threading.Event()

        def hammer(port: int = port, attempt: int = attempt, stop=stop) -> None:
            for i in range(50):  # replacements until the server dies
                if stop.is_set():
                    return
                upload(port, tiny_adapter_name, versions[1 + (attempt + i) % 3])
                upload(port, f"extra-{attempt}", versions[i % 4])

        client = threading.Thread(target=hammer)
        client.start()
        time.sleep(delay + 0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        client.join()
        # A new server on the same store: start-up cleans any leftovers of the crash.
        port = free_port()
        proc = start(tiny_model_dir, store, port)
        try:
            names = [
                a["id"] for a in httpx.get(f"http://127.0.0.1:{port}/v1/adapters").json()["data"]
            ]
            assert tiny_adapter_name in names and len(names) == len(set(names))
            for entry in store.iterdir():
                # A work folder this young may be another replica's write in flight (the store
                # may be shared), so start-up leaves it; it is never listed, and a start after
                # REPAIR_AFTER_S removes it (checked below).
                if entry.name.startswith((TMP, DEL, OLD)):
                    assert entry.name not in names
                    continue
                weights = entry / WEIGHTS_FILE
                assert weights.is_file(), f"{entry.name} is incomplete"
                assert hashlib.sha256(weights.read_bytes()).hexdigest() in known
            body = {"model": tiny_adapter_name, "prompt": "The capital", "max_tokens": 4}
            response = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60)
            assert response.status_code == 200
        finally:
            proc.kill()
            proc.wait()
    # A later start, once work folders are old enough to be nobody's write: nothing is left.
    later = type("LaterStart", (LocalAdapterStore,), {"REPAIR_AFTER_S": -1.0})(store)
    assert not [e.name for e in store.iterdir() if e.name.startswith(".")]
    assert tiny_adapter_name in later.names()
