"""Issue 10, item 9: a folder under ``--adapter-roots`` whose files are symbolic links (or not
regular files) is refused with a 4xx, nothing is stored, and the server keeps serving."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from adapter_files import Env, assert_error, complete, env_fixture, post, text
from attack_helpers import bystanders

from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE
from loraplex.engine.adapter_tiers.service import STAGING_PREFIX

env = env_fixture("roots-links")


def load(env: Env, name: str, path: Path) -> httpx.Response:
    return post(env.url, "/v1/adapters/load", json={"name": name, "path": str(path)})


def staging_leftovers() -> list[str]:
    return [p for p in os.listdir(tempfile.gettempdir()) if p.startswith(STAGING_PREFIX)]


def linked_folder(env: Env, name: str, **targets: Path) -> Path:
    """A folder under the roots: files named in ``targets`` are links, the rest copies."""
    folder = env.roots / name
    folder.mkdir()
    for file, data in ((CONFIG_FILE, env.files.config), (WEIGHTS_FILE, env.files.weights)):
        key = file.split(".")[0]
        if key in targets:
            (folder / file).symlink_to(targets[key])
        else:
            (folder / file).write_bytes(data)
    return folder


def test_links_and_special_files_under_roots_are_refused(env: Env, tiny_adapter_name: str) -> None:
    outside, inside = env.outside / "x", env.roots / "in-root"
    both_out = {"adapter_config": outside / CONFIG_FILE, "adapter_model": outside / WEIGHTS_FILE}
    attacks = {
        "both-outside": linked_folder(env, "both-outside", **both_out),
        "weights-outside": linked_folder(env, "w-out", adapter_model=outside / WEIGHTS_FILE),
        "link-inside-root": linked_folder(env, "link-inside", adapter_model=inside / WEIGHTS_FILE),
    }
    fifo = env.roots / "fifo"
    fifo.mkdir()
    (fifo / CONFIG_FILE).write_bytes(env.files.config)
    os.mkfifo(fifo / WEIGHTS_FILE)  # a reader that opened it would block forever
    expected = {m: text(complete(env.url, m)) for m in (tiny_adapter_name,)}
    before, leftovers = env.state(), staging_leftovers()
    with bystanders(env.url, expected):
        for name, folder in attacks.items():
            start = time.perf_counter()
            error = assert_error(load(env, name, folder), 403, "symbolic link", "--adapter-roots")
            assert error["type"] == "permission_error" and error["code"] == "path_not_allowed"
            assert time.perf_counter() - start < 5
        start = time.perf_counter()
        assert_error(load(env, "fifo", fifo), 403, "not a regular file")
        assert time.perf_counter() - start < 5
    assert env.state() == before  # nothing registered, nothing copied into the store
    assert staging_leftovers() == leftovers
    # The same folder with real files loads, and is served like the store's copy.
    response = load(env, "real", inside)
    assert response.status_code == 201, response.text
    assert text(complete(env.url, "real")) == expected[tiny_adapter_name]
    assert staging_leftovers() == leftovers


@pytest.mark.parametrize("vllm", [False, True], ids=["native", "vllm-alias"])
def test_load_of_linked_folder_refused_on_both_routes(env: Env, vllm: bool) -> None:
    folder = env.roots / f"alias-{vllm}"
    if not folder.exists():
        linked_folder(env, folder.name, adapter_config=env.outside / "x" / CONFIG_FILE)
    if vllm:
        body = {"lora_name": "alias", "lora_path": str(folder)}
        response = post(env.url, "/v1/load_lora_adapter", json=body)
    else:
        response = load(env, "alias", folder)
    assert_error(response, 403, "symbolic link")
