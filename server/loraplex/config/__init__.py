"""Frozen configuration, built once from the command line (or a test) and never mutated.

Every dataclass validates itself in ``__post_init__`` and raises ``ValueError`` with a message
that names the offending option, so a bad flag fails at start-up, not in the middle of a step.

One module per section (``model``, ``cache``, ``scheduler``, ``lora``, ``server``,
``structured``), as ``cli/`` has one per section for the flags; this package's names are all of
theirs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplex.config.cache import CacheConfig
from loraplex.config.lora import LORA_DTYPES, LORA_KERNELS, LoRAConfig
from loraplex.config.model import (
    ATTENTION_BACKENDS,
    DTYPES,
    LOAD_FORMATS,
    QUANTIZATIONS,
    ModelConfig,
)
from loraplex.config.scheduler import BATCH_DEFAULTS, SchedulerConfig, batch_defaults
from loraplex.config.server import ServerConfig
from loraplex.config.structured import TOOL_CALL_PARSERS, StructuredConfig

__all__ = [
    "ATTENTION_BACKENDS",
    "BATCH_DEFAULTS",
    "DTYPES",
    "LOAD_FORMATS",
    "LORA_DTYPES",
    "LORA_KERNELS",
    "QUANTIZATIONS",
    "TOOL_CALL_PARSERS",
    "CacheConfig",
    "Config",
    "LoRAConfig",
    "ModelConfig",
    "SchedulerConfig",
    "ServerConfig",
    "StructuredConfig",
    "batch_defaults",
]


@dataclass(frozen=True)
class Config:
    """Everything the process needs; one instance per server."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    structured: StructuredConfig = field(default_factory=StructuredConfig)
