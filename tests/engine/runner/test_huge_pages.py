"""Weights, slot tables and KV caches moved onto transparent huge pages: values, sharing and
Parameters are kept, and everything still runs where huge pages are not available."""

from __future__ import annotations

import gc

import pytest
import torch

from loraplex.engine.runner import huge_pages
from loraplex.engine.runner.huge_pages import huge_pages_available, huge_zeros, move_to_huge_pages

needs_thp = pytest.mark.skipif(not huge_pages_available(), reason="no transparent huge pages")


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(512, 256)  # 512 KiB: moved
        self.head = torch.nn.Linear(256, 512, bias=False)
        self.head.weight = self.embed.weight  # tied, as many decoders are
        self.norm = torch.nn.LayerNorm(256)  # small: left alone
        self.register_buffer("table", torch.randn(4, 16, 1024))  # 256 KiB buffer: moved


@needs_thp
def test_move_keeps_values_parameters_and_tied_weights() -> None:
    torch.manual_seed(0)
    model = Tied()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    embed_param, norm = model.embed.weight, model.norm.weight
    norm_ptr = norm.data_ptr()
    x = torch.randn(3, 256)
    expected = model.head(x)
    moved = move_to_huge_pages(model)
    assert moved == 512 * 256 * 4 + 4 * 16 * 1024 * 4  # the tied weight counted once
    assert model.embed.weight is embed_param  # the same Parameter object, new storage
    assert model.head.weight is model.embed.weight
    # Too small to move, but copied: no tensor is left viewing a checkpoint's memory map.
    assert model.norm.weight is norm and model.norm.weight.data_ptr() != norm_ptr
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(model.head(x), expected)
    model.table[0, 0, 0] = 7.0  # still writable in place (slot tables are)
    assert model.table[0, 0, 0] == 7.0


def test_huge_zeros_are_zeros_of_the_shape_and_dtype() -> None:
    t = huge_zeros((3, 5, 7), torch.float16)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float16 and not t.any()
    t += 1
    assert t.sum() == 105


def test_nothing_moves_without_huge_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huge_pages, "huge_pages_available", lambda: False)
    model = Tied()
    ptr = model.embed.weight.data_ptr()
    assert move_to_huge_pages(model) == 0
    assert model.embed.weight.data_ptr() == ptr
    assert huge_zeros((2, 2), torch.float32).sum() == 0


def test_thp_never_means_unavailable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", setting)
    assert not huge_pages_available()
    setting.write_text("always [madvise] never\n")
    assert huge_pages_available() == hasattr(__import__("mmap"), "MADV_HUGEPAGE")


@needs_thp
def test_no_tensor_keeps_the_checkpoint_mapped(tmp_path) -> None:
    """A model read from safetensors views the memory-mapped file; once moved, nothing does,
    so the map and the file pages the load touched leave the process (issue 20's RSS)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    checkpoint = str(tmp_path / "model.safetensors")

    def mapped() -> bool:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip().endswith(checkpoint) for line in maps)

    assert mapped()
    move_to_huge_pages(model)
    gc.collect()
    assert not mapped()
