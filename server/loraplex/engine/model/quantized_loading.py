"""Loading the base model in a quantized format, checking it, and counting its bytes by format.

transformers does the reading: a float checkpoint is quantized tensor by tensor as it is placed
on the device (bitsandbytes' ``quantization_config``), so the float model never sits whole in
memory; a folder saved quantized is read as it is. Dummy weights (``--load-format dummy``) are
quantized in place, one projection at a time. What transformers does not check is checked here:
every quantized weight must be whole (codes, scales and shape agree), so a damaged checkpoint
stops the start with its first bad tensor named instead of serving garbage or crashing later.
"""

from __future__ import annotations

import ctypes
import logging
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from loraplex.engine.model.quantization import QuantFormat, QuantizationError
from loraplex.lora.quantized import is_quantized, tensor_format

log = logging.getLogger(__name__)
# bitsandbytes' CPU kernel layout (AVX-512 BF16) tiles the output rows by 32 and reshapes the
# per-block scales by rows; other shapes fail its repacking, so they keep the plain layout.
CPU_PACK_ROWS = 32


def load_quantized(
    path: str, dtype: torch.dtype, device: torch.device, attn_implementation: str, fmt: QuantFormat
) -> PreTrainedModel:
    """``path``'s causal LM in ``fmt`` on ``device``, computing in ``dtype``; any failure to
    read it is a QuantizationError naming the folder and the cause."""
    options = {} if fmt.prequantized else {"quantization_config": _bnb_config(fmt, dtype)}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            attn_implementation=attn_implementation,
            device_map={"": device},  # each tensor is read (and quantized) on the device
            **options,
        )
    except Exception as exc:  # a damaged file surfaces as many types; all stop the start
        raise QuantizationError(
            f"the {fmt.describe()} weights in {path} could not be loaded: {exc}"
        ) from exc
    check_quantized(model, path)
    if device.type == "cpu":
        _own_float_tensors(model)
    return model


def _own_float_tensors(model: nn.Module) -> None:
    """Copies of the float tensors a load left as views of the checkpoint's memory map
    (embeddings, norms): any one of them keeps the map alive, and with it every page of the
    float checkpoint that quantizing read (its whole size, resident for nothing)."""
    with torch.no_grad():
        for tensor in {id(t): t for t in (*model.parameters(), *model.buffers())}.values():
            if tensor.layout is torch.strided and not is_quantized(tensor):
                tensor.data = tensor.data.clone()


def _bnb_config(fmt: QuantFormat, dtype: torch.dtype):  # -> BitsAndBytesConfig
    from transformers import BitsAndBytesConfig

    if fmt.method == "bitsandbytes":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def quantize_in_place(model: nn.Module, fmt: QuantFormat, dtype: torch.dtype) -> None:
    """Replace every float projection but the output embedding with its bitsandbytes form,
    quantized where its weight is (dummy weights: a real shape, quantized as a load would)."""
    import bitsandbytes as bnb

    output = model.get_output_embeddings()
    for name, linear in _float_linears(model, output):
        device, bias = linear.weight.device, linear.bias is not None
        if fmt.method == "bitsandbytes":
            layer = bnb.nn.Linear4bit(
                *_in_out(linear), bias, compute_dtype=dtype, quant_type="nf4", device="meta"
            )
            # As BitsAndBytesConfig(load_in_4bit) does: no double quantization of the scales.
            layer.weight = bnb.nn.Params4bit(
                linear.weight.data, compress_statistics=False, quant_type="nf4", module=layer
            )
        else:  # LLM.int8 (transformers' threshold); bitsandbytes quantizes it from the host
            layer = bnb.nn.Linear8bitLt(
                *_in_out(linear), bias, has_fp16_weights=False, threshold=6.0, device="meta"
            )
            layer.weight = bnb.nn.Int8Params(
                linear.weight.data.cpu(), requires_grad=False, has_fp16_weights=False
            )
        if bias:
            layer.bias = linear.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.to(device))


def _float_linears(model: nn.Module, output: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [
        (name, m) for name, m in model.named_modules() if type(m) is nn.Linear and m is not output
    ]


def _in_out(linear: nn.Linear) -> tuple[int, int]:
    return linear.in_features, linear.out_features


class _OnceFilter(logging.Filter):
    """Let a per-forward library warning through once per process, then drop it."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.seen = text, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        seen, self.seen = self.seen, True
        return not seen


# LLM.int8 casts activations to float16 to quantize them, and bitsandbytes says so at every
# forward of every layer: once is enough.
logging.getLogger("bitsandbytes.autograd._functions").addFilter(
    _OnceFilter("inputs will be cast from")
)


def settle(model: nn.Module, dtype: torch.dtype, device: torch.device) -> None:
    """Fix what bitsandbytes would otherwise decide at the first forward, before serving.

    Every 4-bit layer computes in ``dtype`` (a saved folder names its own compute dtype). On a
    CPU, bitsandbytes repacks a 4-bit weight into its kernel layout at its first forward: done
    now, once, so no forward rewrites a weight that a merge may be reading on another thread;
    shapes the repacking cannot take keep the plain layout (dequantize, then a float GEMM).
    """
    for layer in _bnb_layers(model, "Linear4bit"):
        layer.compute_dtype = dtype
        if device.type != "cpu" or not getattr(layer, "support_avx512bf16_for_cpu", False):
            continue
        blocksize = layer.weight.quant_state.blocksize
        if layer.out_features % CPU_PACK_ROWS or layer.in_features % blocksize:
            layer.support_avx512bf16_for_cpu = False
            continue
        with torch.no_grad():
            layer(torch.zeros(1, layer.in_features, dtype=dtype))
    if device.type == "cpu" and _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)  # quantizing and repacking freed ~4x the weights in transients


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim (None elsewhere): gives freed heap pages back to the OS."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def _bnb_layers(model: nn.Module, kind: str) -> Iterator[nn.Module]:
    return (m for m in model.modules() if type(m).__name__ == kind)


def check_quantized(model: nn.Module, path: str) -> None:
    """Raise QuantizationError at the first bitsandbytes weight whose codes, scales and shape
    disagree (a truncated or edited checkpoint transformers read without complaint)."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind not in ("Linear4bit", "Linear8bitLt"):
            continue
        problem = _bad_4bit(module) if kind == "Linear4bit" else _bad_8bit(module)
        if problem:
            raise QuantizationError(f"the quantized checkpoint {path} is damaged: {name} {problem}")


def _bad_4bit(layer: nn.Module) -> str | None:
    weight, state = layer.weight, getattr(layer.weight, "quant_state", None)
    if state is None or not getattr(weight, "bnb_quantized", False):
        return "holds no 4-bit weight (its quantization state is missing)"
    shape = (layer.out_features, layer.in_features)
    if tuple(state.shape) != shape:
        return f"is quantized as {tuple(state.shape)}, not {shape}"
    count, nbytes = math.prod(shape), weight.numel() * weight.element_size()
    if nbytes != (count + 1) // 2:
        return f"has {nbytes} bytes of 4-bit codes for {count} weights"
    if state.absmax.numel() != -(-count // state.blocksize):
        return f"has {state.absmax.numel()} block scales for {count} weights"
    return None


def _bad_8bit(layer: nn.Module) -> str | None:
    weight = layer.weight
    if weight.dtype != torch.int8 or tuple(weight.shape) != (layer.out_features, layer.in_features):
        return f"holds a {weight.dtype} {tuple(weight.shape)} weight, not int8 codes"
    scales = weight.SCB if weight.SCB is not None else getattr(layer.state, "SCB", None)
    if scales is None or scales.numel() != layer.out_features:
        return "has no per-row scale for every output row"
    return None


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's weights by storage format (``nf4``, ``int8``, ``float32`` ...),
    tied tensors counted once. Call it before LoRA tables or prepacked copies are added."""
    seen: set[int] = set()
    totals: dict[str, int] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        fmt, nbytes = tensor_format(tensor)
        totals[fmt] = totals.get(fmt, 0) + nbytes
    return totals


def describe_weights(totals: dict[str, int]) -> str:
    """``52.3 MiB nf4 + 108.0 MiB float32 = 160.3 MiB``, largest first."""
    parts = [f"{n / 2**20:.1f} MiB {fmt}" for fmt, n in sorted(totals.items(), key=lambda i: -i[1])]
    return " + ".join(parts) + f" = {sum(totals.values()) / 2**20:.1f} MiB"
