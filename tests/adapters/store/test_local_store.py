"""The local adapter store on a real folder: round trips, replace, delete, crashes mid-put, and
names that try to leave the store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from store_sources import CONFIG, META, WEIGHTS, source, weights, work_dirs

from loraplex.adapters.errors import AdapterNotFoundError, AdapterValidationError
from loraplex.adapters.store import LocalAdapterStore, open_store


def test_local_round_trip(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path / "store")
    store.put("a", source(tmp_path, "v1"), {"description": "first"})
    assert store.names() == ["a"] and store.exists("a") and not store.exists("b")
    folder = store.fetch("a")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG, WEIGHTS, META]
    assert weights(folder) == b"v1" * 100
    meta = store.metadata("a")
    assert meta["description"] == "first" and len(meta["sha256"]) == 64 and meta["created"] > 0


def test_local_replace_swaps_and_leaves_no_work_dirs(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path / "store")
    store.put("a", source(tmp_path, "v1"), {})
    store.put("a", source(tmp_path, "v2"), {"sha256": "given"})
    assert weights(store.fetch("a")) == b"v2" * 100
    assert store.metadata("a")["sha256"] == "given"
    assert work_dirs(store.root) == []


def test_local_delete(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path / "store")
    store.put("a", source(tmp_path, "v1"), {})
    store.delete("a")
    assert store.names() == [] and not store.exists("a") and work_dirs(store.root) == []
    for call in (store.fetch, store.metadata, store.delete):
        with pytest.raises(AdapterNotFoundError):
            call("a")


# "a/b" is tenant a's adapter b (stored as a@b); "a/b/c", "a@b" and "../x" name nothing.
@pytest.mark.parametrize("name", ["../x", "a/b/c", "a@b", ".tmp-x", "..", "/etc"])
@pytest.mark.parametrize("method", ["exists", "fetch", "metadata", "delete", "put"])
def test_local_names_cannot_leave_the_store(tmp_path: Path, method: str, name: str) -> None:
    store = LocalAdapterStore(tmp_path / "store")
    args = (name, source(tmp_path, "v"), {}) if method == "put" else (name,)
    with pytest.raises(AdapterValidationError, match="invalid adapter name"):
        getattr(store, method)(*args)
    assert store.names() == [] and work_dirs(store.root) == []


def test_local_put_of_incomplete_folder_is_refused(tmp_path: Path) -> None:
    store = LocalAdapterStore(tmp_path / "store")
    folder = source(tmp_path, "v")
    (folder / WEIGHTS).unlink()
    with pytest.raises(AdapterValidationError, match=r"adapter_model\.safetensors is missing"):
        store.put("a", folder, {})
    assert store.names() == [] and work_dirs(store.root) == []


@pytest.mark.parametrize("failing", [".tmp-", "a"])  # rename new in / move old aside
def test_local_failed_rename_keeps_old_version(tmp_path: Path, monkeypatch, failing: str) -> None:
    store = LocalAdapterStore(tmp_path / "store")
    store.put("a", source(tmp_path, "v1"), {})
    real_replace = os.replace

    def replace(src: os.PathLike, dst: os.PathLike) -> None:
        if Path(src).name.startswith(failing) and Path(src).parent == store.root:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        store.put("a", source(tmp_path, "v2"), {})
    assert store.names() == ["a"] and weights(store.fetch("a")) == b"v1" * 100
    assert work_dirs(store.root) == []


def test_local_recovers_from_a_hard_crash(tmp_path: Path) -> None:
    """A killed process leaves work dirs: ignored by names(), repaired by the next start."""
    root = tmp_path / "store"
    store = LocalAdapterStore(root)
    store.put("a", source(tmp_path, "v1"), {})
    store.put("b", source(tmp_path, "v1"), {})
    (root / ".tmp-0123456789abcdef-a").mkdir()  # crashed while writing a new "a"
    (root / ".tmp-0123456789abcdef-a" / CONFIG).write_text("{")
    os.replace(root / "b", root / ".old-0123456789abcdef-b")  # crashed between the renames
    os.replace(root / "a", root / ".del-0123456789abcdef-a")  # crashed while deleting "a"
    assert store.names() == []
    long_ago = time.time() - LocalAdapterStore.REPAIR_AFTER_S - 1
    for entry in work_dirs(root):
        os.utime(root / entry, (long_ago, long_ago))
    again = LocalAdapterStore(root)
    assert again.names() == ["b"] and weights(again.fetch("b")) == b"v1" * 100
    assert work_dirs(root) == []


def test_local_leaves_another_replicas_writes_in_flight_alone(tmp_path: Path) -> None:
    """Replicas share one volume: a starting one must not take a fresh work folder for a crash."""
    root = tmp_path / "store"
    LocalAdapterStore(root).put("b", source(tmp_path, "v1"), {})
    (root / ".tmp-0123456789abcdef-a").mkdir()  # another replica is writing "a"
    os.replace(root / "b", root / ".old-0123456789abcdef-b")  # another replica is replacing "b"
    LocalAdapterStore(root)
    assert sorted(work_dirs(root)) == [".old-0123456789abcdef-b", ".tmp-0123456789abcdef-a"]


def test_local_ignores_what_is_not_an_adapter(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / ".git").mkdir(parents=True)
    (root / "README.md").write_text("adapters live here")
    (root / "half").mkdir()
    (root / "half" / CONFIG).write_text("{}")
    (root / "by-hand").mkdir()
    for name in (CONFIG, WEIGHTS):
        (root / "by-hand" / name).write_text("{}")
    store = LocalAdapterStore(root)
    assert store.names() == ["by-hand"] and store.metadata("by-hand") == {}
    assert not store.exists("half")


def test_open_store_opens_a_folder_for_a_path(tmp_path: Path) -> None:
    """(``s3://`` URLs: see the ``s3`` fixture of test_s3_store.py.)"""
    assert isinstance(open_store(str(tmp_path / "s"), tmp_path / "c"), LocalAdapterStore)


def test_local_tenants_namesakes_are_apart(tmp_path: Path) -> None:
    """acme/support, globex/support and the public support: three folders, three contents."""
    store = LocalAdapterStore(tmp_path / "store")
    for name, body in (("support", "pub"), ("acme/support", "acm"), ("globex/support", "glx")):
        store.put(name, source(tmp_path, body), {"owner": name.rpartition("/")[0] or None})
    assert store.names() == ["acme/support", "globex/support", "support"]
    assert weights(store.fetch("acme/support")) == b"acm" * 100
    assert weights(store.fetch("globex/support")) == b"glx" * 100
    assert store.metadata("acme/support")["owner"] == "acme"
    store.delete("acme/support")
    assert store.names() == ["globex/support", "support"] and work_dirs(store.root) == []
    assert LocalAdapterStore(store.root).names() == ["globex/support", "support"]  # reopened


def test_local_sizes_count_one_tenants_adapters(tmp_path: Path) -> None:
    """What the tenant quota counts: config + weights bytes of each of the tenant's adapters."""
    store = LocalAdapterStore(tmp_path / "store")
    for name, body in (("support", "pub"), ("acme/a", "aa"), ("acme/b", "b"), ("acmex/c", "c")):
        store.put(name, source(tmp_path, body), {"owner": name.rpartition("/")[0] or None})
    config = len((store.fetch("acme/a") / CONFIG).read_bytes())
    assert store.sizes("acme") == {"acme/a": config + 200, "acme/b": config - 1 + 100}
    assert store.sizes("globex") == {}
