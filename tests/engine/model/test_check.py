"""Start-up refusal (engine/model/check.py): a model the engine cannot run stops ``serve`` with
a message naming the feature and the model; it never starts and then fails requests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import word_tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig
from loraplex.engine.build import build_engine
from loraplex.engine.model.check import UnsupportedModelError, check_config

pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny forwards


@pytest.fixture(scope="module")
def bloom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BLOOM: ALiBi attention computed inside the model, outside the interface."""
    folder = tmp_path_factory.mktemp("bloom")
    torch.manual_seed(0)
    config = AutoConfig.for_model("bloom", hidden_size=64, n_layer=2, n_head=4, vocab_size=96)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def serve(folder: Path, tmp_path: Path) -> None:
    build_engine(
        Config(
            model=ModelConfig(model=str(folder), served_model_name="tiny"),
            cache=CacheConfig(block_size=4, num_blocks=8),
            lora=LoRAConfig(adapters_dir=str(tmp_path)),
        )
    )


def save(folder: Path, model_type: str, **fields: object) -> Path:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, vocab_size=96, **fields)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def test_attention_computed_inside_the_model_is_refused(bloom: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match=r"'tiny'.*layer 0.*ALiBi") as caught:
        serve(bloom, tmp_path)
    assert caught.value.model == "tiny"


SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
REFUSED_BY_PROBE = {
    # Differential attention: two calls per layer over two halves of the values.
    "diffllama": ({**SMALL, "num_attention_heads": 4, "num_key_value_heads": 2}, "2 times"),
    # Multi-head latent attention: keys and values of different sizes.
    "deepseek_v3": (
        {**SMALL, "num_attention_heads": 4, "num_key_value_heads": 4, "kv_lora_rank": 16,
         "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 8,
         "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
         "n_group": 1, "topk_group": 1},
        r"keys \[4, 16\] and values \[4, 8\]",
    ),
}  # fmt: skip


@pytest.mark.parametrize("model_type", list(REFUSED_BY_PROBE))
def test_what_the_probe_finds_is_refused(model_type: str, tmp_path: Path) -> None:
    fields, feature = REFUSED_BY_PROBE[model_type]
    folder = save(tmp_path / model_type, model_type, **fields)
    with pytest.raises(UnsupportedModelError, match=rf"'tiny' cannot be served: .*{feature}"):
        serve(folder, tmp_path)


@pytest.mark.parametrize(
    ("model_type", "fields", "feature"),
    [
        ("qwen3_next", {"num_hidden_layers": 4}, "layer 0 is a 'linear_attention' layer"),
        ("llama4_text", {"num_hidden_layers": 4}, "layer 0 is a 'chunked_attention' layer"),
        ("jamba", {"num_hidden_layers": 2}, "'linear_attention' layer"),
        ("falcon_h1", {"num_hidden_layers": 2}, "layer 0 is a 'hybrid' layer"),
        ("t5", {}, "encoder-decoder"),
        ("lfm2", {"num_hidden_layers": 3, "full_attn_idxs": [1]}, "layer 0 is a 'conv' layer"),
        ("rwkv", {}, "no attention heads"),
        ("gemma4_text", {}, "attention shapes of their own"),
    ],
)
def test_layers_the_paged_cache_cannot_hold_are_refused(
    model_type: str, fields: dict, feature: str
) -> None:
    config = AutoConfig.for_model(model_type, **fields)
    with pytest.raises(UnsupportedModelError, match=feature):
        check_config(config, model_type)


def test_full_sliding_and_mlp_only_layers_pass() -> None:
    mixed = AutoConfig.for_model(
        "gemma3_text", num_hidden_layers=3, layer_types=["sliding_attention", "full_attention"] * 1
        + ["sliding_attention"], sliding_window=8,
    )  # fmt: skip
    assert check_config(mixed, "g") == [0, 1, 2]
    moe_and_mlp = AutoConfig.for_model("llama", num_hidden_layers=2)
    moe_and_mlp.layer_types = ["full_attention", "mlp"]
    assert check_config(moe_and_mlp, "m") == [0]


def test_serve_exits_3_naming_the_feature_and_the_model(bloom: Path, tmp_path: Path) -> None:
    """The real command: no server is left listening, the status says the start failed."""
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[3] / "server"),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "loraplex.cli", "serve", "--model", str(bloom), "--port", "0",
         "--adapters-dir", str(tmp_path), "--num-blocks", "8"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]
    assert "model 'bloom" in done.stderr and "computes its attention itself" in done.stderr
    assert "Application startup failed" in done.stderr
