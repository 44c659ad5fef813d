"""``adapter_config.json`` parsed once, strictly, into one frozen :class:`PeftConfig`.

Uploads, start-up scans and reads back from the store all parse it here, with the same rules:
strict JSON describing a plain LoRA that this server applies exactly (anything it would apply
differently from PEFT is refused, never ignored). The parsed config answers PEFT's per-module
questions: which modules it targets, and each module's rank ``r_m``, alpha ``alpha_m`` and
scale ``s_m = alpha_m / r_m`` (``alpha_m / sqrt(r_m)`` with ``use_rslora``), where ``r_m`` and
``alpha_m`` come from the first ``rank_pattern`` / ``alpha_pattern`` key matching the module.

``target_parameters`` (PEFT's ``lora.ParamWrapper``) names parameters rather than modules: the
fused expert tensors of a MoE model (``experts.gate_up_proj``, ``experts.down_proj``) and its
router (``gate.weight``). An entry matches a parameter path that equals it or ends with
``.entry`` (PEFT's rule); rank and alpha come from the patterns matched against that path.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.module_patterns import (
    MAX_PATTERN_CHARS,
    MAX_PATTERN_KEYS,
    Targets,
    check_key,
    check_regex,
    first_match,
    matches,
)
from loraplex.adapters.rules import CONFIG_FILE, MAX_LORA_VALUE, Limits, strict_json

log = logging.getLogger(__name__)

# PEFT options that change what the adapter computes at inference: any truthy value is refused.
UNSUPPORTED = (
    "use_dora",
    "modules_to_save",
    "lora_bias",
    "layer_replication",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "trainable_token_indices",
    "arrow_config",
)

__all__ = ["UNSUPPORTED", "PeftConfig"]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _rank(what: str, value: object, limits: Limits) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limits.max_rank:
        raise AdapterValidationError(
            f"{what} must be an integer in 1..{limits.max_rank} (the server's maximum rank, "
            f"--max-lora-rank), got {value!r}"
        )
    return value


def _alpha(what: str, value: object) -> float:
    """A finite alpha in (0, MAX_LORA_VALUE]: the scale it gives is folded into slot tables."""
    if not _is_number(value) or not 0 < value <= MAX_LORA_VALUE:
        raise AdapterValidationError(
            f"{what} must be a positive number of at most {MAX_LORA_VALUE:g} (the scale "
            f"alpha/r is folded into float16-capable slot tables), got {value!r}"
        )
    return float(value)


def _patterns(field: str, patterns: object, limits: Limits) -> tuple[tuple[str, float], ...]:
    """``rank_pattern`` / ``alpha_pattern``: {regex: positive number}; ranks within the limit."""
    if patterns is None:
        return ()
    if not isinstance(patterns, dict):
        raise AdapterValidationError(f"{field} must be an object, got {patterns!r}")
    if len(patterns) > MAX_PATTERN_KEYS:
        raise AdapterValidationError(
            f"{field} has {len(patterns)} keys; the limit is {MAX_PATTERN_KEYS}"
        )
    for key, value in patterns.items():
        check_key(f"{field} key {key!r}", key)
        if field == "rank_pattern":
            _rank(f"rank_pattern[{key!r}]", value, limits)
        else:
            _alpha(f"alpha_pattern[{key!r}]", value)
    return tuple(patterns.items())


def _targets(targets: object, field: str) -> Targets:
    """A non-empty list of module names, or one regex matched against full module names."""
    if isinstance(targets, str) and targets:
        check_regex(field, targets)
        return targets
    if (
        not isinstance(targets, list)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise AdapterValidationError(
            f"{field} must be a non-empty list of module names or a regex, got {targets!r}"
        )
    return tuple(targets)


def _parameters(value: object) -> tuple[str, ...]:
    """``target_parameters``: absent, or a list of parameter names (PEFT refuses a string)."""
    if value is None or value == []:
        return ()
    if (
        not isinstance(value, list)
        or len(value) > MAX_PATTERN_KEYS
        or not all(isinstance(t, str) and 0 < len(t) <= MAX_PATTERN_CHARS for t in value)
    ):
        raise AdapterValidationError(
            f"target_parameters must be a list of at most {MAX_PATTERN_KEYS} parameter names, "
            f"got {value!r}"
        )
    return tuple(value)


def _last_component(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _check_base(base: object, served_model: str, limits: Limits) -> None:
    """An adapter trained on another base model computes garbage here: refuse unless allowed.

    Hub ids and local paths compare by their last component, case-insensitively.
    """
    if base is None or base == "" or not served_model:
        return
    if not isinstance(base, str):
        raise AdapterValidationError(f"base_model_name_or_path must be a string, got {base!r}")
    trained, served = _last_component(base), _last_component(served_model)
    if trained.casefold() == served.casefold():
        return
    message = (
        f"adapter was trained on {trained!r} (base_model_name_or_path {base!r}) "
        f"but this server serves {served!r}"
    )
    if not limits.allow_base_mismatch:
        raise AdapterValidationError(message + " (start with --allow-base-mismatch to accept it)")
    log.warning("%s; accepted because base mismatches are allowed", message)


@dataclass(frozen=True)
class PeftConfig:
    """A plain LoRA's ``adapter_config.json``, checked (build one with :meth:`parse`)."""

    r: int
    lora_alpha: float
    target_modules: Targets
    exclude_modules: Targets | None = None
    rank_pattern: tuple[tuple[str, int], ...] = ()  # (regex key, r_m), in the file's order
    alpha_pattern: tuple[tuple[str, float], ...] = ()  # (regex key, alpha_m)
    use_rslora: bool = False
    base_model: str | None = None  # base_model_name_or_path
    target_parameters: tuple[str, ...] = ()  # parameter names (MoE experts, routers)

    @classmethod
    def parse(cls, data: bytes, limits: Limits, served_model: str) -> PeftConfig:
        """Parse ``adapter_config.json`` and refuse anything this server cannot apply exactly.

        ``served_model`` empty: the base model is not compared.
        """
        if len(data) > limits.max_config_bytes:
            raise AdapterValidationError(
                f"{CONFIG_FILE} is {len(data)} bytes; the limit is {limits.max_config_bytes}"
            )
        config = strict_json(data, CONFIG_FILE)
        if not isinstance(config, dict):
            raise AdapterValidationError(f"{CONFIG_FILE} must hold a JSON object")
        if config.get("peft_type") != "LORA":
            peft_type = config.get("peft_type")
            raise AdapterValidationError(f"peft_type must be 'LORA', got {peft_type!r}")
        r = _rank("r", config.get("r"), limits)
        alpha = _alpha("lora_alpha", config.get("lora_alpha"))
        if config.get("bias") not in (None, "none"):
            raise AdapterValidationError(
                f"bias={config['bias']!r} is not supported (plain LoRA only)"
            )
        for field in UNSUPPORTED:
            if config.get(field):
                raise AdapterValidationError(
                    f"{field}={config[field]!r} is not supported (plain LoRA only)"
                )
        use_rslora = config.get("use_rslora")
        if use_rslora is not None and not isinstance(use_rslora, bool):
            raise AdapterValidationError(f"use_rslora must be true or false, got {use_rslora!r}")
        rank_pattern = _patterns("rank_pattern", config.get("rank_pattern"), limits)
        alpha_pattern = _patterns("alpha_pattern", config.get("alpha_pattern"), limits)
        parameters = _parameters(config.get("target_parameters"))
        modules = config.get("target_modules")
        # PEFT allows no target_modules (or []) when target_parameters names the targets.
        targets = () if parameters and not modules else _targets(modules, "target_modules")
        excluded = config.get("exclude_modules")
        base = config.get("base_model_name_or_path")
        _check_base(base, served_model, limits)
        return cls(
            r=r,
            lora_alpha=alpha,
            target_modules=targets,
            exclude_modules=_targets(excluded, "exclude_modules") if excluded else None,
            rank_pattern=rank_pattern,  # type: ignore[arg-type]  # ranks checked to be ints
            alpha_pattern=alpha_pattern,
            use_rslora=bool(use_rslora),
            base_model=base or None,
            target_parameters=parameters,
        )

    @classmethod
    def read(cls, path: Path, limits: Limits, served_model: str) -> PeftConfig:
        """:meth:`parse` the file at ``path``, reading at most ``max_config_bytes`` of it."""
        with path.open("rb") as f:
            data = f.read(limits.max_config_bytes + 1)
        if len(data) > limits.max_config_bytes:
            raise AdapterValidationError(
                f"{path.name} is larger than {limits.max_config_bytes} bytes"
            )
        return cls.parse(data, limits, served_model)

    @property
    def target_names(self) -> tuple[str, ...]:
        """``target_modules`` as a tuple (a regex is one entry), as cards show it."""
        targets = self.target_modules
        return (targets,) if isinstance(targets, str) else targets

    def targets(self, module: str) -> bool:
        """Whether PEFT would put a LoRA on ``module``: targeted and not excluded."""
        excluded = self.exclude_modules
        return matches(self.target_modules, module) and not (excluded and matches(excluded, module))

    def targets_parameter(self, path: str) -> bool:
        """Whether PEFT would wrap the parameter at ``path`` (``module.name``): an entry of
        ``target_parameters`` equals it or is its last dotted components."""
        return bool(self.target_parameters) and matches(self.target_parameters, path)

    def rank_of(self, module: str) -> int:
        return int(first_match(self.rank_pattern, module, self.r))

    def alpha_of(self, module: str) -> float:
        return float(first_match(self.alpha_pattern, module, self.lora_alpha))

    def scale_of(self, module: str) -> float:
        """``alpha_m / r_m``, or ``alpha_m / sqrt(r_m)`` with rsLoRA."""
        rank = self.rank_of(module)
        return self.alpha_of(module) / (math.sqrt(rank) if self.use_rslora else rank)
