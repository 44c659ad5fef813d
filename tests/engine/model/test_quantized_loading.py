"""Loading a quantized base (engine/model/quantized_loading.py, engine/model/base.py): a
damaged checkpoint stops the start with the bad tensor named, dummy weights are quantized at
load, the CPU kernel layout is fixed before serving, and the weight bytes are counted by format
(the start-up log; /metrics and the adapter cards: tests/api/test_quantized_base_e2e.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from engine_helpers import run
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from loraplex.config import CacheConfig, Config, LoRAConfig, ModelConfig
from loraplex.engine.build import build_engine
from loraplex.engine.model.quantization import QuantizationError
from loraplex.engine.model.quantized_loading import describe_weights, settle
from loraplex.engine.runner.model_runner import ModelRunner

bnb = pytest.importorskip("bitsandbytes")
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def nf4_folder(store: tuple[Path, Path], tmp_path_factory) -> Path:
    model_dir, _ = store
    config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=config, device_map="cpu"
    )
    folder = tmp_path_factory.mktemp("nf4") / "model"
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, folder)
    return folder


def runner_for(folder: Path, **model: object) -> ModelRunner:
    return ModelRunner(
        str(folder),
        ModelConfig(model=str(folder), **model),
        CacheConfig(block_size=4, num_blocks=8),
        LoRAConfig(max_loras=2, max_lora_rank=8),
    )


def edit_weights(folder: Path, edit) -> None:
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def drop_absmax(tensors: dict) -> None:
    del tensors[Q_PROJ + ".absmax"]


def cut_codes(tensors: dict) -> None:
    tensors[Q_PROJ] = tensors[Q_PROJ][:100].clone()  # transformers reads this without a word


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda folder: edit_weights(folder, drop_absmax), "could not be loaded"),
        (lambda folder: edit_weights(folder, cut_codes), "q_proj has 100 bytes of 4-bit codes"),
        (
            lambda folder: (folder / "model.safetensors").write_bytes(
                (folder / "model.safetensors").read_bytes()[:5000]
            ),
            "could not be loaded",
        ),
    ],
    ids=["scales-missing", "codes-cut", "file-truncated"],
)
def test_a_damaged_checkpoint_is_a_start_up_error(nf4_folder, tmp_path, damage, message) -> None:
    folder = Path(shutil.copytree(nf4_folder, tmp_path / "model"))
    damage(folder)
    with pytest.raises(QuantizationError, match=message) as exc:
        runner_for(folder)
    assert str(folder) in str(exc.value)


def test_weight_bytes_by_format_reach_the_log(store, nf4_folder, caplog) -> None:
    model_dir, _ = store
    float_runner = runner_for(model_dir)
    with caplog.at_level("INFO", logger="loraplex.engine.model.base"):
        runner = runner_for(nf4_folder)
    assert runner.base_format == "bitsandbytes-nf4" and float_runner.base_format == "float32"
    assert "bitsandbytes nf4 (saved quantized), compute float32" in caplog.text
    assert describe_weights(runner.weight_bytes) in caplog.text
    # The seven projections of the two layers: 4 bits a weight plus a scale per 64 (float32,
    # or bfloat16 once repacked for an AVX-512 BF16 CPU's kernel).
    projections = sum(i * o for i, o in runner.lora.module_shapes().values())
    layer = next(iter(runner.lora.layers.values()))
    scale = layer.base.weight.quant_state.absmax.element_size()
    assert runner.weight_bytes["nf4"] == projections // 2 + projections // 64 * scale
    floats = float_runner.weight_bytes["float32"]
    assert runner.weight_bytes["float32"] == floats - 4 * projections  # embeddings, norms


def test_dummy_weights_are_quantized_at_load(store) -> None:
    model_dir, adapters = store  # its config.json gives the shape; the weights are random
    for method, kind in [("bitsandbytes", "Linear4bit"), ("bitsandbytes-8bit", "Linear8bitLt")]:
        engine = build_engine(
            Config(
                model=ModelConfig(model=str(model_dir), load_format="dummy", quantization=method),
                cache=CacheConfig(block_size=4, num_blocks=16),
                lora=LoRAConfig(max_loras=2, max_lora_rank=8, adapters_dir=str(adapters)),
            )
        )
        runner = engine.runner
        bases = [type(layer.base).__name__ for layer in runner.lora.layers.values()]
        assert bases == [kind] * 14
        assert type(runner.model.get_output_embeddings()).__name__ != kind
        assert runner.weight_bytes.keys() == {"float32", "nf4" if kind == "Linear4bit" else "int8"}
        [tokens] = run(engine, [([5, 6, 7], "all")], max_tokens=3, ignore_eos=True)
        assert len(tokens) == 3


def nf4_layer(in_features: int, out_features: int) -> nn.Module:
    layer = bnb.nn.Linear4bit(in_features, out_features, False, torch.float32, quant_type="nf4")
    return layer.to("cpu").eval()  # quantizes its (random) weight


def test_settle_fixes_the_cpu_layout_before_serving() -> None:
    model = nn.Sequential(nf4_layer(64, 64), nf4_layer(64, 48)).eval()
    model[1].compute_dtype = torch.bfloat16  # as a folder saved for a GPU may say
    settle(model, torch.float32, torch.device("cpu"))
    packs = bool(bnb.functional.has_avx512bf16())  # the repacking runs on such CPUs only
    assert getattr(model[0].weight.quant_state, "packing_format_for_cpu", False) == packs
    # 48 rows do not tile by 32: that layer keeps the plain layout instead of failing.
    assert not getattr(model[1].weight.quant_state, "packing_format_for_cpu", False)
    assert model[1].compute_dtype == torch.float32
    with torch.no_grad():
        assert model(torch.randn(3, 64)).shape == (3, 48)
