"""The engine's public face: what the API (or any other caller) uses of the engine, and the only
module of it that ``api/`` imports.

Inside, a step runs in one direction through the rooms: ``sched/`` (who runs) ->
``adapter_tiers/`` (their adapters in device slots) -> ``runner/`` (the forward, through
``model/`` weights and ``attention/``) -> ``sample/`` -> ``output/`` (deltas, stops); a request
is described by ``request/`` and checked by ``intake.py``; ``llm_engine.py`` drives the step,
``async_engine.py`` runs it on its own thread, ``build.py`` wires it once.

Names load on first use (as vLLM's own ``__init__`` does), so importing one room, say the
scheduler, does not import the model runner and its dependencies.
"""

from __future__ import annotations

import importlib
from typing import Any

# Each public name and the module it lives in.
_HOMES = {
    "loraplex.engine.async_engine": ["AsyncEngine"],
    "loraplex.engine.adapter_tiers.tiers": ["AdapterSpec"],
    "loraplex.engine.constraints.spec": ["ConstraintError", "ConstraintSpec"],
    "loraplex.engine.errors": [
        "CapacityError",
        "ConstraintViolationError",
        "EngineUnavailableError",
        "NonFiniteOutputError",
        "ParameterError",
        "QueueFullError",
    ],
    "loraplex.engine.model.quantization": ["QuantizationError", "resolve_quantization"],
    "loraplex.engine.request.outputs": ["RequestOutput", "TokenLogprob"],
    "loraplex.engine.request.params": [
        "MAX_LOGPROBS",
        "MAX_STOP_CHARS",
        "MAX_STOP_STRINGS",
        "MAX_STOP_TOKEN_IDS",
        "MAX_TOP_K",
        "DOCUMENTED_SEED_MAX",
        "SEED_RANGE",
        "SamplingParams",
        "check_logprobs",
    ],
    "loraplex.engine.request.stream": ["RequestStream"],
}
# Modules of plain functions callers build requests with, under the name they are known by.
_MODULES = {"constraint_specs": "loraplex.engine.constraints.spec"}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted([*_HOME_OF, *_MODULES])


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
        globals()[name] = value
        return value
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'loraplex.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
