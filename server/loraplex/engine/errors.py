"""Every error the engine raises to a caller, in one place (``api/errors.py`` maps each to an
HTTP status): a bad parameter (400), a server-wide cap (409), a full queue (429), an engine
that takes nothing (503), and the non-finite output a request can end with after it ran."""

from __future__ import annotations

from loraplex.adapters.weights import MIX_PREFIX


class ParameterError(ValueError):
    """A request parameter is out of range; ``param`` names it (OpenAI's ``error.param``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class CapacityError(Exception):
    """A server-wide cap is reached (HTTP 409, not a bad parameter: the same request succeeds
    once something is released); the message names the option that sets the cap, ``param``
    what the request asked for (``pinned``, ``merge``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class QueueFullError(Exception):
    """The queue (or the tenant's share of it) is full: HTTP 429 with ``Retry-After``."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailableError(Exception):
    """No request is admitted: the server drains for shutdown, or its engine died (HTTP 503)."""


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
    """The grammar refused the sampled token although its mask was applied. Non-finite rows
    fail before their grammar advances, so the one way here is a mask that left no token of
    the model's vocabulary allowed (every logit -inf): the grammar cannot be written with this
    tokenizer at this point, the request's input (a 400, ``invalid_constraint``); the request
    ends, the others go on."""

    def __init__(self, token: int) -> None:
        super().__init__(
            f"the grammar allows no token of this model's vocabulary at this point (the "
            f"sampled token {token} is outside it); simplify the schema, regex or grammar"
        )
