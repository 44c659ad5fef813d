"""``--load-format dummy``: a model from a config alone (or the built-in Llama-3-8B shape), and
random adapters for it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from builders import ALL_SEVEN, model_config

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig, SchedulerConfig
from loraplex.engine.build import build_engine
from loraplex.engine.model.dummy import (
    DUMMY_MODEL_NAME,
    build_dummy_model,
    builtin_dummy_folder,
    random_adapter,
)
from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.batch import build_batch
from loraplex.engine.runner.model_runner import ModelRunner
from loraplex.engine.sched.scheduler import ScheduledSeq

CPU = torch.device("cpu")


@pytest.fixture
def config_only(tmp_path: Path) -> Path:
    """A folder with a tiny Llama's config.json and nothing else: no weights, no tokenizer."""
    model_config("llama").save_pretrained(tmp_path / "tiny-config")
    return tmp_path / "tiny-config"


def test_the_builtin_config_is_llama_3_8b_shaped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLEX_CACHE", str(tmp_path))
    folder = builtin_dummy_folder()
    assert folder.name == DUMMY_MODEL_NAME and builtin_dummy_folder() == folder
    model = build_dummy_model(folder, torch.bfloat16, torch.device("meta"))  # no memory
    assert sum(p.numel() for p in model.parameters()) == 8_030_261_248
    attention = model.model.layers[0].self_attn
    assert (attention.k_proj.out_features, model.model.layers[0].mlp.up_proj.out_features) == (
        1024,
        14336,
    )


def test_an_engine_serves_random_weights_from_a_config_folder(config_only: Path) -> None:
    engine = build_engine(
        Config(
            model=ModelConfig(model=str(config_only), load_format="dummy", max_model_len=64),
            cache=CacheConfig(block_size=4, num_blocks=16),
            scheduler=SchedulerConfig(max_num_seqs=2, max_num_batched_tokens=32),
            lora=LoRAConfig(max_loras=1, max_lora_rank=8, adapters_dir=None),
        )
    )
    assert engine.model_name == "tiny-config"
    prompt = engine.tokenizer.encode("t5 t6 t7")
    assert prompt == [5, 6, 7]
    engine.add_request("r", prompt, SamplingParams(max_tokens=4, ignore_eos=True), None)
    tokens: list[int] = []
    while engine.has_unfinished():
        for out in engine.step():
            tokens.extend(out.token_ids)
    assert len(tokens) == 4


def test_random_adapters_fit_the_model_and_change_its_output(config_only: Path) -> None:
    runner = ModelRunner(
        str(config_only),
        ModelConfig(model=str(config_only), load_format="dummy"),
        CacheConfig(block_size=4, num_blocks=16),
        LoRAConfig(max_loras=2, max_lora_rank=8, kernel="torch"),
    )
    shapes = {n: (m.in_features, m.out_features) for n, m in runner.lora.layers.items()}
    adapter = random_adapter("r1", shapes, rank=8, targets=ALL_SEVEN, seed=1)
    assert len(adapter.modules) == 7 * 2 and adapter.max_rank == 8
    again = random_adapter("r1", shapes, rank=8, targets=ALL_SEVEN, seed=1)
    assert torch.equal(
        again.modules["model.layers.1.mlp.down_proj"].b,
        adapter.modules["model.layers.1.mlp.down_proj"].b,
    )
    only_q = random_adapter("q", shapes, rank=4, targets=["q_proj"], seed=2)
    assert sorted(only_q.modules) == [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]
    with pytest.raises(ValueError, match="no module"):
        random_adapter("none", shapes, rank=4, targets=["c_attn"], seed=3)
    assert all(runner.lora.module_shapes()[m] == (w.a.shape[1], w.b.shape[0])
               for m, w in adapter.modules.items())  # fmt: skip
    runner.lora.load_slot(1, adapter)
    assert runner.lora.slot_ranks.tolist() == [0, 8]

    def last_logits(adapter_name: str | None) -> torch.Tensor:
        seq = Sequence("s", [5, 6, 7, 8, 9], SamplingParams(), adapter=adapter_name)
        seq.block_table = [0, 1]
        batch = build_batch([ScheduledSeq(seq, 5)], {"r1": 1}, 4, 2, CPU)
        return runner.forward(batch)[0]

    assert not torch.allclose(last_logits("r1"), last_logits(None))
