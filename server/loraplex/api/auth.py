"""Who is calling and what they may do: API keys -> a :class:`Principal` (tenant, role); each
role's permissions; which adapters a tenant sees and how its names resolve.

Keys arrive as ``Authorization: Bearer <key>`` (what the openai client sends) or ``x-api-key``.
A presented key is hashed and its digest compared with :func:`hmac.compare_digest` against every
entry (no early exit), so neither the time taken nor the table's order reveals a key.

Roles: ``admin`` everything, every tenant (server-side loads, merge/unmerge, pins, public
adapters); ``user`` generates and uploads, replaces and deletes its own tenant's adapters;
``inference`` only generates (the key an application ships with).

Namespaces (the rules are ``adapters/tenancy.py``'s): a tenant's adapter ``support`` is
``<tenant>/support`` in the registry; a tenant names it ``support``. Public adapters (present at
start, or an admin's upload with ``public=true``) are seen by everyone under their bare name.
Another tenant's adapter resolves to nothing, so every route answers it with the same 404 as a
name that does not exist. An admin reaches any tenant's adapter as ``tenant/name`` (in
``model``, in the ``/v1/adapters/{name}`` path, as an upload's ``name``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from loraplex.adapters import tenancy
from loraplex.adapters.card import AdapterCard
from loraplex.adapters.tenancy import DEFAULT_TENANT, AdapterId
from loraplex.api.errors import PERMISSION_ERROR, APIError
from loraplex.api_keys import ApiKeyEntry
from loraplex.config import ServerConfig

GENERATE = "generate"  # completions, chat, /generate, the model list
MANAGE = "manage adapters"  # list, inspect, upload, replace, delete its tenant's adapters
ANY_TENANT = "reach other tenants' adapters"
LOAD_PATH = "load server-side adapter folders"
MERGE = "merge or unmerge adapters"
PIN = "pin adapters"
PUBLISH = "create, replace or delete public adapters"

T = TypeVar("T")
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({GENERATE, MANAGE, ANY_TENANT, LOAD_PATH, MERGE, PIN, PUBLISH}),
    "user": frozenset({GENERATE, MANAGE}),
    "inference": frozenset({GENERATE}),
}


@dataclass(frozen=True)
class Principal:
    """The caller: ``role`` of ``tenant``. Without keys every caller is :data:`OPEN`, whose
    uploads are public (one operator, no tenants: the store keeps its plain layout)."""

    tenant: str
    role: str
    open: bool = False

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]

    def require(self, permission: str) -> None:
        """403 (OpenAI's shape) unless the role has ``permission``."""
        if not self.may(permission):
            message = f"An API key with role {self.role!r} may not {permission}."
            raise APIError(403, message, PERMISSION_ERROR, code="permission_denied")

    def cache_salt(self, explicit: str | None) -> str:
        """The prefix-cache salt of a request: always the tenant, plus the request's own salt,
        so no salt a client chooses can equal another tenant's."""
        return json.dumps([self.tenant, explicit])

    def sees(self, card: AdapterCard) -> bool:
        return tenancy.sees(card.owner, self.tenant, self.may(ANY_TENANT))

    def display_name(self, card: AdapterCard) -> str:
        """``name`` for its own and public adapters, ``tenant/name`` for another tenant's."""
        return tenancy.display_name(card.id, self.tenant)

    def visible(self, cards: Iterable[AdapterCard]) -> list[tuple[str, AdapterCard]]:
        """(display name, card) of every adapter this caller sees, as :meth:`resolve` finds
        them: a public adapter that the tenant's own namesake shadows is left out."""
        return tenancy.visible(cards, self.tenant, self.may(ANY_TENANT))

    def lookup(self, name: str, find: Callable[[str], T | None]) -> T | None:
        """What ``name`` means to this caller, found by ``find`` (a lookup by qualified name):
        its own first, then a public one; None when unknown, invalid, or another tenant's
        (which this caller may not know of)."""
        return tenancy.resolve(name, self.tenant, find, self.may(ANY_TENANT))

    def resolve(self, name: str, has: Callable[[str], bool]) -> str | None:
        """The qualified name ``name`` means to this caller (:meth:`lookup`), or None."""
        return self.lookup(name, lambda qualified: qualified if has(qualified) else None)

    def new_adapter(self, name: str, public: bool, has: Callable[[str], bool]) -> str:
        """The qualified name an upload of ``name`` creates or replaces (``public``: admins
        only). A name a public adapter has is taken for every tenant (409)."""
        if public:
            self.require(PUBLISH)
        ident = AdapterId.parse(name)  # an invalid name: 400
        public = public or (self.open and ident.owner is None)
        if ident.owner is None:
            return tenancy.upload_id(ident.name, self.tenant, public, has).qualified
        if public:
            raise APIError(400, "a public adapter's name has no tenant/ part", param="name")
        if ident.owner != self.tenant:
            self.require(ANY_TENANT)
        return ident.qualified

    def check_writable(self, qualified: str) -> None:
        """Replacing or deleting a public adapter is an admin's (403 for anyone else)."""
        if AdapterId.parse(qualified).public:
            self.require(PUBLISH)


OPEN = Principal(DEFAULT_TENANT, "admin", open=True)


class KeyTable:
    """The accepted keys, by digest; ``lookup`` is constant-time in the presented key."""

    def __init__(self, entries: tuple[ApiKeyEntry, ...]) -> None:
        self._entries = [(bytes.fromhex(e.sha256), Principal(e.tenant, e.role)) for e in entries]

    @classmethod
    def from_config(cls, server: ServerConfig) -> KeyTable:
        return cls(server.key_entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def lookup(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
        found = None
        for expected, principal in self._entries:  # every entry, whatever matched
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


def presented_key(request: Request) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``x-api-key``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


def authenticate(request: Request) -> Principal:
    """The caller of a ``/v1`` (or ``/generate``) route; 401 without a known key when keys are
    configured. ``/health``, ``/ready`` and ``/metrics`` never ask."""
    table: KeyTable = request.app.state.keys
    if not table:
        return OPEN
    key = presented_key(request)
    principal = table.lookup(key) if key is not None else None
    if principal is None:
        raise APIError(
            401,
            "Invalid or missing API key; send 'Authorization: Bearer <key>' or 'x-api-key'.",
            param=None,
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def allow(permission: str) -> Any:
    """A route dependency: 403 unless the caller's role has ``permission`` (401 first)."""

    def check(principal: PrincipalDep) -> None:
        principal.require(permission)

    return Depends(check)
