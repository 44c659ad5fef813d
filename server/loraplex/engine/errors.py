"""Errors a request can end with after it was admitted (the API maps each to its status)."""

from __future__ import annotations

from loraplex.adapters.weights import MIX_PREFIX


class NonFiniteOutputError(Exception):
    """The request's logits went inf/NaN: it fails alone, its KV blocks are cleared.

    ``caused_by_input`` when an adapter (or a mix) computed them: its weights overflow the
    compute dtype, a 400 naming ``param``; on the bare base model it is the server's fault
    (a 500)."""

    def __init__(self, adapter: str | None) -> None:
        self.caused_by_input = adapter is not None
        self.param = "adapters" if adapter and adapter.startswith(MIX_PREFIX) else "model"
        source = "the base model" if adapter is None else "its adapter"
        super().__init__(
            f"the model's output became non-finite (inf/NaN) under {source}; the request was "
            "stopped and its cached keys and values discarded"
        )


class ConstraintViolationError(Exception):
    """The grammar refused a sampled token although its mask was applied: a server fault (a
    500); the request ends, the others go on."""

    def __init__(self, token: int) -> None:
        super().__init__(f"the sampled token {token} is outside the request's grammar")
