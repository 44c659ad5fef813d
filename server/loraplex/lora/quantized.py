"""What a LoRA layer needs to know about a base projection whose weight may be quantized.

A quantized projection (bitsandbytes ``Linear4bit`` / ``Linear8bitLt``, a GPU format's linear)
is used as it is: the LoRA layer calls it for ``W0·x`` and adds ``scale·B·A·x`` in the compute
dtype. Three questions remain, answered here without importing the optional libraries:

- the compute dtype (the slot tables' default): a float weight's dtype, else the layer's
  ``compute_dtype`` (bitsandbytes 4-bit), else the model's float dtype;
- the storage format and bytes of a weight (``nf4``, ``int8``, ``float32`` ...), for the
  start-up log and ``/metrics``;
- the dequantized ``W0`` [out, in] that a merge adds ``scale·B·A`` to, or why there is none.
  bitsandbytes' own dequantization is exact (it is the weight its kernels compute with). On a
  CPU with AVX-512 BF16, bitsandbytes repacks a 4-bit weight into a kernel layout at its first
  forward; that layout is read back through the kernel itself: ``W0ᵀ = base(I)`` with ``I`` the
  [in, in] identity (one-hot rows: each output row is one column of the weight as the kernel
  sees it, rounded to bfloat16 as its output is).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
PROBE_ROWS = 1024  # identity rows per probe forward (reading a weight back through its kernel)


class MergeUnsupportedError(Exception):
    """The base projection's weight cannot be dequantized exactly here: merging would be wrong."""


def projection_device(base: nn.Module) -> torch.device:
    """Where the projection's weight lives (its first parameter or buffer)."""
    for tensor in (*base.parameters(recurse=False), *base.buffers(recurse=False)):
        return tensor.device
    raise ValueError(f"{type(base).__name__} holds no weight")


def compute_dtype(base: nn.Module, fallback: torch.dtype) -> torch.dtype:
    """The dtype ``base(x)`` computes and returns in: a float weight's own dtype, else a
    bitsandbytes 4-bit layer's ``compute_dtype``, else ``fallback`` (the model's float dtype,
    which 8-bit and GPU-format layers return for float inputs)."""
    weight = getattr(base, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dtype in FLOAT_DTYPES:
        return weight.dtype
    dtype = getattr(base, "compute_dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else fallback


def is_quantized(tensor: torch.Tensor) -> bool:
    """A bitsandbytes parameter, or any weight stored in a non-float dtype."""
    return type(tensor).__name__ in ("Params4bit", "Int8Params") or not (
        tensor.is_floating_point() and tensor.dtype in FLOAT_DTYPES
    )


def tensor_format(tensor: torch.Tensor) -> tuple[str, int]:
    """(format, bytes) of one stored weight: ``nf4``/``fp4`` (the packed 4-bit codes plus their
    per-block absmax), ``int8`` (codes plus per-row scales), else the dtype's name."""
    kind = type(tensor).__name__
    nbytes = tensor.numel() * tensor.element_size()
    if kind == "Params4bit" and tensor.quant_state is not None:
        state = tensor.quant_state
        nbytes += _nbytes(state.absmax)
        if state.nested:  # double quantization: the absmax codes' own scales
            nbytes += _nbytes(state.state2.absmax) + _nbytes(state.state2.code)
        return state.quant_type, nbytes
    if kind == "Int8Params":
        return "int8", nbytes + _nbytes(getattr(tensor, "SCB", None))
    return str(tensor.dtype).removeprefix("torch."), nbytes


def _nbytes(tensor: torch.Tensor | None) -> int:
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def dequantized_weight(base: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """``W0`` [out, in] in ``dtype``, read-only use: a new tensor for a quantized weight, the
    weight itself (or a transposed view, GPT-2's Conv1D) for a float one.

    Raises :class:`MergeUnsupportedError` naming the layer type where no exact dequantization
    is known (GPU formats: their kernels' layouts are theirs)."""
    reason = merge_refusal(base)
    if reason is not None:
        raise MergeUnsupportedError(reason)
    weight = base.weight
    kind = type(weight).__name__
    if kind == "Params4bit":
        return _dequantize_4bit(base, weight, dtype)
    if kind == "Int8Params":
        import bitsandbytes.functional as bnbf

        scales = weight.SCB if weight.SCB is not None else base.state.SCB
        return bnbf.int8_vectorwise_dequant(weight.data, scales).to(dtype)
    return (weight.T if isinstance(base, Conv1D) else weight).to(dtype)


def merge_refusal(base: nn.Module) -> str | None:
    """Why ``base``'s weight cannot be dequantized exactly (None: it can)."""
    weight = getattr(base, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return f"{type(base).__name__} exposes no weight to dequantize"
    if type(weight).__name__ in ("Params4bit", "Int8Params") or not is_quantized(weight):
        return None
    return (
        f"{type(base).__name__} stores its weight as {weight.dtype}, which loraplex cannot "
        "dequantize exactly"
    )


def _dequantize_4bit(base: nn.Module, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        # The CPU kernel's own layout: read the weight back through the kernel (see above).
        columns = []
        with torch.no_grad():
            for start in range(0, base.in_features, PROBE_ROWS):  # bounded transient memory
                rows = min(PROBE_ROWS, base.in_features - start)
                eye = torch.zeros(rows, base.in_features, dtype=dtype, device=weight.device)
                eye[:, start : start + rows].fill_diagonal_(1.0)
                out = base(eye)
                columns.append(out if base.bias is None else out - base.bias.to(dtype))
        return torch.cat(columns).T.contiguous()
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(weight.data, weight.quant_state).to(dtype)
