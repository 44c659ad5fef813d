"""PEFT adapter files -> checked host weights: the config parse, the safetensors, folder and
archive checks, the stores, the registry, the host-memory cache and the cards.

No ``nn.Module`` here and nothing from the engine or the API; the runtime math is in ``lora/``.
"""
