"""Start-up over a real local store: an adapter stored after passing every check is not read
again while the store vouches its weights file is unchanged (its recorded hash is its identity);
the config and header rules still run; any sign of change means a full check; and loading it
into memory always checks every byte."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.folder_check import check_folder
from loraplex.adapters.registry import AdapterRegistry
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE, Limits
from loraplex.adapters.store import LocalAdapterStore
from loraplex.adapters.store.files import METADATA_FILE

SHAPES = {"model.layers.0.self_attn.q_proj": (8, 8)}
A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def write(folder: Path, value: float = 0.5, rank: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 4, "target_modules": ["q_proj"]}
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    save_file(
        {A: torch.full((rank, 8), value), B: torch.full((8, rank), value)}, folder / WEIGHTS_FILE
    )
    return folder


@pytest.fixture
def registry_on(tmp_path: Path) -> Iterator[Callable[..., AdapterRegistry]]:
    made: list[AdapterRegistry] = []

    def make(max_rank: int = 8) -> AdapterRegistry:
        check = functools.partial(
            check_folder, limits=Limits(max_rank=max_rank), served_model="", module_shapes=SHAPES
        )
        made.append(AdapterRegistry(LocalAdapterStore(tmp_path / "store"), torch.float32, check, 4))
        return made[-1]

    yield make
    for registry in made:
        registry.close()


@pytest.fixture
def stored(registry_on, tmp_path: Path) -> tuple[AdapterRegistry, Path]:
    """acme/a stored through an upload's path; returns the registry and its weights file."""
    registry = registry_on()
    registry.register("acme/a", write(tmp_path / "src"))
    return registry, tmp_path / "store" / "acme@a" / WEIGHTS_FILE


def poison_in_place(weights: Path, keep_mtime: bool) -> None:
    """Rewrite the stored weights with NaNs: the same shapes, so the same size."""
    before = weights.stat()
    save_file({A: torch.full((2, 8), float("nan")), B: torch.full((8, 2), 0.5)}, weights)
    assert weights.stat().st_size == before.st_size
    if keep_mtime:
        os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_the_store_records_what_it_vouches_for(stored) -> None:
    registry, weights = stored
    meta = json.loads((weights.parent / METADATA_FILE).read_text())
    assert meta["values_checked"] == 1 and meta["sha256"] == registry.get("acme/a").version
    st = weights.stat()
    assert meta["weights_stat"] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    assert registry.store.unchanged("acme/a", meta)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert not registry.store.unchanged("acme/a", meta)


def test_an_unchanged_adapter_is_not_read_at_start_but_every_load_checks_it(
    stored, registry_on
) -> None:
    """The weights are poisoned behind the store's back with size and mtime kept: start-up
    trusts the record (so it cannot have read them), and the load into memory refuses them."""
    registry, weights = stored
    card = registry.get("acme/a")
    poison_in_place(weights, keep_mtime=True)
    again = registry_on()
    assert again.scan() == ["acme/a"] and again.refused() == {}
    assert again.get("acme/a") == card  # the recorded hash is the version
    with pytest.raises(AdapterValidationError, match="NaN"):
        again.load(card)


def test_a_changed_file_is_checked_in_full_at_start(stored, registry_on) -> None:
    _, weights = stored
    poison_in_place(weights, keep_mtime=False)
    again = registry_on()
    assert again.scan() == []
    assert "NaN" in again.refused()["acme/a"]


def test_records_of_older_value_checks_are_not_trusted(stored, registry_on) -> None:
    _, weights = stored
    meta_file = weights.parent / METADATA_FILE
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps(meta | {"values_checked": 0}))
    poison_in_place(weights, keep_mtime=True)
    again = registry_on()
    assert again.scan() == [] and "NaN" in again.refused()["acme/a"]


def test_rules_of_the_options_still_run_on_a_trusted_adapter(stored, registry_on) -> None:
    """Restarted with --max-lora-rank 1: the rank-2 adapter is refused though unchanged."""
    again = registry_on(max_rank=1)
    assert again.scan() == []
    assert "rank" in again.refused()["acme/a"]
