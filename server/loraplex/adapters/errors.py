"""Adapter errors; the API layer maps each to an HTTP status and the OpenAI error body."""

from __future__ import annotations


class AdapterError(Exception):
    """Base class of every adapter problem; the message names the problem for the client."""


class AdapterNotFoundError(AdapterError, KeyError):
    """No adapter by this name is registered (HTTP 404)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"adapter {name!r} does not exist")
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the message again
        return str(self.args[0])


class AdapterValidationError(AdapterError, ValueError):
    """An adapter's config or weights are unusable with the served base model (HTTP 400)."""


class AdapterExistsError(AdapterError):
    """An adapter by this name exists and the upload did not ask to replace it (HTTP 409)."""


class AdapterPathError(AdapterError):
    """A server-side path outside every configured adapter root (HTTP 403)."""


class AdapterRefusedError(AdapterError):
    """An adapter found at start (the store, ``--lora-modules``) that could not be taken; the
    message says why and which option to change (HTTP 400)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"adapter {name!r} was refused when the server started: {reason}")
        self.name = name
        self.reason = reason


class AdapterQuotaError(AdapterError):
    """An upload that would take its tenant past a storage quota; the message names the option
    (HTTP 409: the request conflicts with what the tenant already stores, and succeeds as is
    once it deletes something; not 413, the body is not too large, nor 403, nothing is
    forbidden to the role, nor 429, retrying the same request does not help)."""

    def __init__(self, message: str, option: str) -> None:
        super().__init__(message)
        self.option = option
