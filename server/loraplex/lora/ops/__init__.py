"""LoRA ops behind one signature; the backend is chosen here, once, never inside a layer."""

from loraplex.lora.ops.meta import LoRAMeta, build_lora_meta
from loraplex.lora.ops.torch_ops import add_lora

__all__ = ["LoRAMeta", "add_lora", "build_lora_meta"]
