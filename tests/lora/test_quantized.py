"""A base projection that may be quantized (lora/quantized.py): its compute dtype, its stored
bytes by format, and the dequantized W0 a merge adds to, or the reason there is none."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from loraplex.adapters.weights import LoRAWeights
from loraplex.engine.adapter_tiers.merged import MergedCopies, MergeRefusedError
from loraplex.lora.layers import LoRAContext, LoRALinear
from loraplex.lora.manager import LoRAModelManager
from loraplex.lora.quantized import (
    MergeUnsupportedError,
    compute_dtype,
    dequantized_weight,
    merge_refusal,
    tensor_format,
)

bnb = pytest.importorskip("bitsandbytes")


def float_linear(out_features: int = 64, in_features: int = 128, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=True)


def nf4(linear: nn.Linear) -> nn.Module:
    """``linear`` as bitsandbytes NF4, computing in float32 (quantized on the CPU)."""
    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, True, torch.float32, quant_type="nf4"
    )
    layer.weight = bnb.nn.Params4bit(
        linear.weight.data.clone(), compress_statistics=False, quant_type="nf4", module=layer
    )
    layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return layer.to("cpu").eval()


def test_nf4_dequantizes_to_what_its_kernel_computes_in_either_layout() -> None:
    linear = float_linear()
    layer = nf4(linear)
    assert compute_dtype(layer, torch.bfloat16) == torch.float32  # the layer's, not the fallback
    fmt, nbytes = tensor_format(layer.weight)
    assert fmt == "nf4" and nbytes == 64 * 128 // 2 + 64 * 128 // 64 * 4  # codes + fp32 absmax
    plain = dequantized_weight(layer, torch.float32)  # bitsandbytes' own dequantization
    assert plain.shape == (64, 128)
    # NF4 has 16 levels per 64-weight block: close to W, never equal.
    assert 0 < (plain - linear.weight).abs().max() < 0.25 * linear.weight.abs().max()
    x = torch.randn(5, 128)
    packed = copy.deepcopy(layer)
    with torch.no_grad():
        y = packed(x)  # on an AVX-512 BF16 CPU this repacks the weight into the kernel layout
        read_back = dequantized_weight(packed, torch.float32)
    # Either layout gives the weight the kernel uses: bfloat16 rounding apart (its output).
    torch.testing.assert_close(read_back, plain, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(y, x @ read_back.T + layer.bias, rtol=2e-2, atol=2e-2)


def test_int8_dequantizes_with_its_row_scales() -> None:
    linear = float_linear(seed=1)
    layer = bnb.nn.Linear8bitLt(128, 64, True, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(
        linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False
    )
    layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    layer = layer.to("cpu")
    assert tensor_format(layer.weight) == ("int8", 64 * 128 + 64 * 4)
    assert compute_dtype(layer, torch.float16) == torch.float16  # names none: the model's
    before = dequantized_weight(layer, torch.float32)
    step = linear.weight.abs().max().item() / 127  # one int8 step of the widest row
    torch.testing.assert_close(before, linear.weight.data, rtol=0, atol=step)
    with torch.no_grad():
        layer(torch.randn(2, 128))  # the layer takes the scales over from the weight
    assert torch.equal(dequantized_weight(layer, torch.float32), before)


def test_float_weights_are_read_as_they_are() -> None:
    linear = float_linear()
    assert dequantized_weight(linear, torch.float32) is linear.weight
    conv = Conv1D(64, 128)  # GPT-2's [in, out] layout
    assert torch.equal(dequantized_weight(conv, torch.float32), conv.weight.T)
    assert tensor_format(linear.weight) == ("float32", 64 * 128 * 4)
    assert merge_refusal(linear) is None


def test_a_weight_with_no_exact_dequantization_refuses_merges() -> None:
    """A float8 weight (an FP8 checkpoint's layout, scales elsewhere): serving it would go
    through its own kernel; merging into it is refused, naming why, never done wrongly."""
    model = nn.Sequential(float_linear(), float_linear(128, 64))
    model[1].weight = nn.Parameter(model[1].weight.data.to(torch.float8_e4m3fn), False)
    model.get_output_embeddings = lambda: None
    manager = LoRAModelManager(model, num_slots=2, max_rank=4)
    layer = manager.layers["1"]
    assert layer.lora_a.dtype == torch.float32  # the model's float dtype, not float8
    with pytest.raises(MergeUnsupportedError, match="float8_e4m3fn"):
        layer.merged_weight(LoRAWeights(torch.zeros(4, 64), torch.zeros(128, 4), 1.0))
    copies = MergedCopies(manager, limit=2)
    with pytest.raises(MergeRefusedError, match=r"1: Linear stores its weight as .*float8"):
        copies.begin("some-adapter@abc")


def test_lora_layer_on_nf4_adds_the_update_in_the_compute_dtype() -> None:
    layer = nf4(float_linear())
    lora = LoRALinear(layer, num_slots=2, max_rank=4, context=LoRAContext())
    assert lora.lora_a.dtype == lora.lora_b.dtype == torch.float32
    a, b = torch.randn(4, 128), torch.randn(64, 4)
    merged = lora.merged_weight(LoRAWeights(a, b, 0.5))
    expected = dequantized_weight(layer, torch.float32) + 0.5 * b @ a
    torch.testing.assert_close(merged, expected)
    assert merged.dtype == torch.float32
