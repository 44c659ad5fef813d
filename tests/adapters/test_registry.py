"""The registry's catalog on a real local store: registering reads the weights file once, and a
replaced or removed version is remembered exactly as long as a request holds it."""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraplex.adapters.errors import AdapterNotFoundError, AdapterValidationError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE, Limits
from loraplex.adapters.store import LocalAdapterStore
from loraplex.adapters.weights import LoRAAdapter, LoRAWeights

LAYER = "model.layers.0.self_attn"
SHAPES = {f"{LAYER}.q_proj": (8, 8), f"{LAYER}.v_proj": (8, 8)}


def tensors(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for module in SHAPES:
        out[f"base_model.model.{module}.lora_A.weight"] = torch.randn(2, 8, generator=generator)
        out[f"base_model.model.{module}.lora_B.weight"] = torch.randn(8, 2, generator=generator)
    return out


def write_adapter(folder: Path, seed: int) -> Path:
    """A rank-2 PEFT adapter on q_proj and v_proj; each seed is another version."""
    folder.mkdir(parents=True)
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    save_file(tensors(seed), folder / WEIGHTS_FILE)
    return folder


@pytest.fixture
def make_registry(tmp_path: Path) -> Iterator[Callable[..., AdapterRegistry]]:
    made: list[AdapterRegistry] = []

    def make(capacity: int = 4, on_loaded: Callable[[], None] = lambda: None) -> AdapterRegistry:
        check = functools.partial(
            check_folder, limits=Limits(max_rank=8), served_model="", module_shapes=SHAPES
        )
        store = LocalAdapterStore(tmp_path / "store")
        made.append(AdapterRegistry(store, torch.float32, check, capacity, on_loaded))
        return made[-1]

    yield make
    for registry in made:
        registry.close()


class _Spy:
    """A file opened for reading that reports the size of every read."""

    def __init__(self, file, on_read: Callable[[int], None]) -> None:
        self._file, self._on_read = file, on_read

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(n)
        self._on_read(len(data))
        return data

    def __enter__(self) -> _Spy:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._file, name)


def test_register_reads_the_weights_once_and_serves_what_it_checked(
    make_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file is rewritten right after its first full read: a second read (by a check, a
    hash or a load) would register other bytes than those checked."""
    registry = make_registry()
    weights = write_adapter(tmp_path / "a", seed=1) / WEIGHTS_FILE
    original, size = weights.read_bytes(), weights.stat().st_size
    full_reads: list[str] = []
    real_open = Path.open

    def on_read(n: int) -> None:
        if n == size:
            full_reads.append("store" if stored else "check")
            if len(full_reads) == 1:
                save_file(tensors(seed=2), weights)  # same shapes, other values

    def spy_open(self: Path, mode: str = "r", *args: object, **kwargs: object):
        file = real_open(self, mode, *args, **kwargs)
        return _Spy(file, on_read) if self == weights and "r" in mode else file

    stored = False
    put = registry.store.put

    def spy_put(*args: object) -> None:
        nonlocal stored
        stored = True
        put(*args)

    monkeypatch.setattr(Path, "open", spy_open)
    monkeypatch.setattr(registry.store, "put", spy_put)
    card = registry.register("a", weights.parent)
    assert full_reads == ["check", "store"]  # the store copies the file: its own read
    assert card.version == hashlib.sha256(original).hexdigest()
    adapter = registry.loaded(card.key)
    assert adapter is not None and adapter.version == card.version
    q = tensors(seed=1)
    assert torch.equal(
        adapter.modules[f"{LAYER}.q_proj"].a, q[f"base_model.model.{LAYER}.q_proj.lora_A.weight"]
    )


def test_scan_describes_stored_adapters(make_registry, tmp_path: Path) -> None:
    card = make_registry().register("a", write_adapter(tmp_path / "a", seed=1), description="x")
    again = make_registry()
    assert again.scan() == ["a"] and again.get("a") == card


@pytest.mark.parametrize("how", ["replace", "remove"])
def test_old_version_is_kept_while_held_and_forgotten_once_released(
    make_registry, tmp_path: Path, how: str
) -> None:
    registry = make_registry()
    old = registry.register("a", write_adapter(tmp_path / "v1", seed=1))
    registry.host.acquire(old.key)  # a queued request resolved version 1
    if how == "replace":
        new = registry.register("a", write_adapter(tmp_path / "v2", seed=2), replace=True)
        assert registry.get("a") == new and new.key != old.key
        current = {new.key}
    else:
        registry.remove("a")
        current = set()
    assert set(registry._by_key) == {old.key, *current}
    assert old.key in registry.host  # the request keeps the weights it was admitted with
    registry.host.release(old.key)
    assert set(registry._by_key) == current
    assert old.key not in registry.host


def test_held_version_evicted_from_host_memory_is_read_back_before_a_replace(
    make_registry, tmp_path: Path
) -> None:
    """A request holds version 1, which host memory evicted; version 2 replaces it: version 1
    is read back from the store before the store takes version 2, and stays till released."""
    registry = make_registry(capacity=1)
    old = registry.register("a", write_adapter(tmp_path / "v1", seed=1))
    registry.register("b", write_adapter(tmp_path / "b", seed=3))  # evicts a@v1 from host memory
    held = registry.hold("a")
    assert held == old and old.key not in registry.host
    new = registry.register("a", write_adapter(tmp_path / "v2", seed=2), replace=True)
    assert registry.get("a") == new
    kept = registry.loaded(old.key)
    assert kept is not None and kept.version == old.version  # version 1's weights, not 2's
    assert registry.load(old) is kept  # a load racing the store's change finds the same
    (registry.store.fetch("a") / CONFIG_FILE).unlink()  # as seen midway through a swap-in
    assert registry.load(old) is kept
    registry.register("c", write_adapter(tmp_path / "c", seed=4))  # pressure: held stays
    assert old.key in registry.host
    registry.release(old.key)
    assert old.key not in registry.host and old.key not in registry._by_key
    assert registry.is_retired(old.key) and not registry.is_retired(new.key)


def test_failed_load_of_a_removed_version_is_forgotten_once_released(
    make_registry, tmp_path: Path
) -> None:
    """A request for version 1 waits, not in host memory, while the adapter is deleted: its
    load fails (a delete keeps nothing for queued requests); once the request lets go, nothing
    of it is left."""
    loaded = threading.Event()
    registry = make_registry(capacity=1, on_loaded=loaded.set)
    old = registry.register("a", write_adapter(tmp_path / "v1", seed=1))
    registry.register("b", write_adapter(tmp_path / "b", seed=3))  # evicts a@v1 from host memory
    registry.hold("a")
    registry.remove("a")
    registry.prefetch(old.key)
    assert loaded.wait(10)
    assert isinstance(registry.failure(old.key), AdapterNotFoundError)
    assert old.key in registry._by_key  # still held: the request is told why it failed
    registry.release(old.key)
    assert registry.failure(old.key) is None and old.key not in registry._by_key


def test_a_failed_store_write_puts_the_old_version_back(
    make_registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new card is published before the store write; if the write fails, the old card is
    current again, and a request that resolved the new one keeps its weights till it ends."""
    registry = make_registry()
    old = registry.register("a", write_adapter(tmp_path / "v1", seed=1))
    seen: list[str] = []

    def failing_put(name: str, folder: Path, metadata: dict) -> None:
        seen.append(registry.hold("a").key)  # a request resolving during the write
        raise OSError("disk full")

    monkeypatch.setattr(registry.store, "put", failing_put)
    with pytest.raises(OSError, match="disk full"):
        registry.register("a", write_adapter(tmp_path / "v2", seed=2), replace=True)
    assert registry.get("a") == old and seen[0] != old.key
    assert registry.loaded(seen[0]) is not None  # the request's version stays in memory
    registry.release(seen[0])
    assert seen[0] not in registry.host and registry.is_retired(seen[0])


def test_current_versions_and_combinations_outlive_their_requests(
    make_registry, tmp_path: Path
) -> None:
    registry = make_registry()
    card = registry.register("a", write_adapter(tmp_path / "a", seed=1))
    weights = LoRAWeights(torch.zeros(2, 8), torch.zeros(8, 2), 1.0)
    mix = LoRAAdapter("+mix-a", "", {f"{LAYER}.q_proj": weights})
    registry.add_ephemeral(mix)
    for key in (card.key, mix.key):
        registry.host.acquire(key)
        registry.host.release(key)
        assert key in registry.host  # still cached for the next request
    assert set(registry._by_key) == {card.key}


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("peft_type", "peft_type must be 'LORA'"),  # a lenient read would default it to LORA
        ("r", "r must be an integer"),  # ... and r to 8
        ("weights", r"lora_A has shape \[2, 8\], expected \[3, 8\]"),
    ],
)
def test_reads_back_from_the_store_are_checked_as_uploads_are(
    make_registry, tmp_path: Path, spoil: str, message: str
) -> None:
    """A stored folder changed behind the registry's back (the same weights bytes, so the same
    version, or other ones) is refused on its next read with the upload's own message."""
    loaded = threading.Event()
    registry = make_registry(capacity=1, on_loaded=loaded.set)
    card = registry.register("a", write_adapter(tmp_path / "a", seed=1))
    registry.register("b", write_adapter(tmp_path / "b", seed=2))  # evicts a from host memory
    stored = registry.store.fetch("a")
    config = json.loads((stored / CONFIG_FILE).read_text())
    if spoil == "weights":
        config["r"] = 3  # shapes must follow the config: rank 2 tensors no longer fit
    else:
        del config[spoil]
    (stored / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(AdapterValidationError, match=message):
        registry.load(card)
    registry.prefetch(card.key)
    assert loaded.wait(10)
    assert isinstance(registry.failure(card.key), AdapterValidationError)


def test_read_of_a_replaced_version_is_refused(make_registry, tmp_path: Path) -> None:
    registry = make_registry()
    old = registry.register("a", write_adapter(tmp_path / "v1", seed=1))
    new = registry.register("a", write_adapter(tmp_path / "v2", seed=2), replace=True)
    assert registry.load(new).version == new.version
    with pytest.raises(AdapterNotFoundError, match=old.version[:16]):
        registry.load(old)


def test_tenants_namesakes_are_two_adapters_with_two_keys(
    make_registry: Callable[..., AdapterRegistry], tmp_path: Path
) -> None:
    """acme/support and globex/support from the same bytes: two entries, two engine keys (the
    weights are the same, the owners are not), each removed alone; a reopened registry finds
    both owners again in the store's metadata."""
    registry = make_registry()
    folder = write_adapter(tmp_path / "src", seed=5)
    acme = registry.register("acme/support", folder)
    globex = registry.register("globex/support", folder)
    assert (acme.owner, globex.owner) == ("acme", "globex")
    assert acme.version == globex.version and acme.key != globex.key
    assert registry.names() == ["acme/support", "globex/support"]
    assert not registry.has("support")
    registry.remove("acme/support")
    assert registry.names() == ["globex/support"]
    assert registry.load(globex).key == globex.key
    reopened = make_registry()
    assert reopened.scan() == ["globex/support"]
    assert reopened.get("globex/support").owner == "globex"


def test_scan_skips_an_adapter_whose_metadata_names_another_owner(
    make_registry: Callable[..., AdapterRegistry], tmp_path: Path
) -> None:
    """The owner is stored twice (folder name and metadata); if they disagree, nobody gets it."""
    registry = make_registry()
    registry.register("acme/support", write_adapter(tmp_path / "src", seed=5))
    meta = registry.store.fetch("acme/support") / "loraplex.json"
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"owner": "globex"}))
    assert make_registry().scan() == []


def test_refresh_adopts_what_another_process_wrote_to_the_shared_store(
    make_registry, tmp_path: Path
) -> None:
    """Two registries over one store folder, as two replicas on one ReadWriteMany volume."""
    here, there = make_registry(), make_registry()
    assert here.scan() == [] and there.scan() == []
    assert here.refresh() == []  # nothing changed: nothing read, nothing retired

    v1 = there.register("a", write_adapter(tmp_path / "v1", seed=1))
    assert here.refresh() == [] and here.get("a").key == v1.key  # new: published

    v2 = there.register("a", write_adapter(tmp_path / "v2", seed=2), replace=True)
    assert [c.key for c in here.refresh()] == [v1.key]  # replaced: the old version retired
    assert here.get("a").key == v2.key and here.get("a").version != v1.version
    assert here.refresh() == []  # the same listing again: no work

    there.remove("a")
    assert [c.key for c in here.refresh()] == [v2.key]  # deleted: dropped
    assert not here.has("a")
    with pytest.raises(AdapterNotFoundError):
        here.get("a")


def test_refresh_keeps_what_this_process_wrote_and_skips_broken_adapters(
    make_registry, tmp_path: Path
) -> None:
    registry = make_registry()
    registry.scan()
    card = registry.register("mine", write_adapter(tmp_path / "mine", seed=1))
    broken = tmp_path / "store" / "broken"
    write_adapter(broken, seed=2)
    (broken / CONFIG_FILE).write_text("{not json")
    assert registry.refresh() == []
    assert registry.names() == ["mine"] and registry.get("mine").key == card.key
