"""A request whose logits go inf/NaN fails alone (issue 24.1): the others in its steps get
exactly the tokens they get alone, its blocks leave the prefix cache and are zeroed, and the
cache holds nothing non-finite afterwards.

Validation keeps such adapters out (``check_values``); this test lets one past it on purpose,
since the runtime guard is what must hold for whatever the checks cannot foresee (an overflow
in a low-precision compute dtype)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, save_adapter
from engine_helpers import make_engine, save_store
from safetensors.torch import load_file, save_file

from loraplex.adapters import safetensors_check
from loraplex.engine.errors import NonFiniteOutputError
from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.params import SamplingParams

VICTIMS = [([5, 6, 7, 8, 9], None), ([10, 11, 12], "all"), (list(range(20, 31)), None)]
ATTACK = (list(range(40, 58)), "poison")


@pytest.fixture(scope="module")
def poisoned_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nonfinite")
    model_dir, adapters = save_store(root, {"all": {"r": 8, "target_modules": ALL_SEVEN}})
    folder = save_adapter(model_dir, adapters / "poison", 7, r=4, target_modules=["v_proj"])
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    for key in tensors:
        if "lora_B" in key:
            tensors[key] = torch.full_like(tensors[key], float("inf"))
    save_file(tensors, path)
    return model_dir, adapters


def drive(engine: LLMEngine, requests, tag: str) -> dict[str, tuple[list[int], Exception | None]]:
    """Run ``requests`` in one batch to the end: request id -> (tokens, error)."""
    params = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    results: dict[str, tuple[list[int], Exception | None]] = {}
    for i, (prompt, adapter) in enumerate(requests):
        engine.add_request(f"{tag}{i}", prompt, params, adapter)
        results[f"{tag}{i}"] = ([], None)
    for _ in range(200):
        if not engine.has_unfinished():
            return results
        for out in engine.step():
            tokens, error = results[out.request_id]
            results[out.request_id] = (tokens + list(out.token_ids), out.error or error)
    raise AssertionError("requests did not finish")


def test_a_non_finite_request_fails_alone_and_leaves_a_clean_cache(
    poisoned_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(safetensors_check, "check_values", lambda *args: None)
    engine = make_engine(poisoned_store, enable_prefix_caching=True)
    alone = drive(engine, VICTIMS, "alone")
    together = drive(engine, [ATTACK, *VICTIMS, ATTACK], "mixed")
    for (tokens, error), (expected, _) in zip(
        list(together.values())[1:-1], alone.values(), strict=True
    ):
        assert error is None and tokens == expected
    for rid in ("mixed0", f"mixed{len(VICTIMS) + 1}"):
        tokens, error = together[rid]
        assert isinstance(error, NonFiniteOutputError) and error.caused_by_input
        assert error.param == "model" and tokens == []
    for key_cache, value_cache in engine.runner.kv_caches:
        assert torch.isfinite(key_cache).all() and torch.isfinite(value_cache).all()
    after = drive(engine, VICTIMS, "after")
    assert [t for t, _ in after.values()] == [t for t, _ in alone.values()]
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
