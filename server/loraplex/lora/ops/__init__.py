"""LoRA ops behind one signature; the backend is chosen here, once, never inside a layer."""

from loraplex.lora.ops.meta import LoRAMeta, build_lora_meta
from loraplex.lora.ops.select import select_add_lora
from loraplex.lora.ops.torch_ops import AddLoRA, add_lora

__all__ = ["AddLoRA", "LoRAMeta", "add_lora", "build_lora_meta", "select_add_lora"]
