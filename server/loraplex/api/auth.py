"""Who is calling and what they may do: API keys -> a :class:`Principal` (tenant, role); each
role's permissions; which adapters a tenant sees and how its names resolve.

Keys arrive as ``Authorization: Bearer <key>`` (what the openai client sends) or ``x-api-key``.
A presented key is hashed and its digest compared with :func:`hmac.compare_digest` against every
entry (no early exit), so neither the time taken nor the table's order reveals a key.

Roles: ``admin`` everything, every tenant (server-side loads, merge/unmerge, pins, public
adapters); ``user`` generates and uploads, replaces and deletes its own tenant's adapters;
``inference`` only generates (the key an application ships with); ``metrics`` only reads
``/metrics`` with every name plain (a Prometheus scrape key). Without a key ``/metrics`` shows
tenants and their adapters as opaque labels (:func:`full_metrics`).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from loraplex.adapters import tenancy
from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterError
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
SCRAPE = "read every tenant's metrics"

T = TypeVar("T")
PERMISSIONS: dict[str, frozenset[str]] = {
    "admin": frozenset({GENERATE, MANAGE, ANY_TENANT, LOAD_PATH, MERGE, PIN, PUBLISH, SCRAPE}),
    "user": frozenset({GENERATE, MANAGE}),
    "inference": frozenset({GENERATE}),
    "metrics": frozenset({SCRAPE}),
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

    def sees(self, card: AdapterCard | AdapterId) -> bool:
        ident = card if isinstance(card, AdapterId) else card.id
        return tenancy.sees(ident.owner, self.tenant, self.may(ANY_TENANT))

    def display_name(self, card: AdapterCard | AdapterId) -> str:
        """``name`` for its own and public adapters, ``tenant/name`` for another tenant's."""
        ident = card if isinstance(card, AdapterId) else card.id
        return tenancy.display_name(ident, self.tenant)

    def visible(self, cards: Iterable[AdapterCard]) -> list[tuple[str, AdapterCard]]:
        """(display name, card) of every adapter this caller sees, as :meth:`resolve` finds
        them: a public adapter that the tenant's own namesake shadows is left out."""
        cards = list(cards)
        shown = dict(self._shown([card.id for card in cards]))
        return [(shown[card.id], card) for card in cards if card.id in shown]

    def visible_refused(self, refused: dict[str, str]) -> list[tuple[str, str]]:
        """(display name, reason) of the adapters refused at start that this caller sees, by
        the same rules as servable ones: another tenant's refusal is as unknown as its adapter."""
        idents: dict[AdapterId, str] = {}
        unnamed = []  # a --lora-modules entry whose name is invalid: an operator's (admins)
        for name, reason in refused.items():
            try:
                idents[AdapterId.parse(name)] = reason
            except AdapterError:
                unnamed.append((name, reason))
        shown = [(name, idents[ident]) for ident, name in self._shown(list(idents))]
        return shown + (unnamed if self.may(ANY_TENANT) else [])

    def _shown(self, idents: list[AdapterId]) -> list[tuple[AdapterId, str]]:
        return tenancy.shown(idents, self.tenant, self.may(ANY_TENANT))

    def lookup(self, name: str, find: Callable[[str], T | None]) -> T | None:
        """What ``name`` means to this caller, found by ``find`` (a lookup by qualified name):
        its own first, then a public one; None when unknown, invalid, or another tenant's
        (which this caller may not know of)."""
        return tenancy.resolve(name, self.tenant, find, self.may(ANY_TENANT))

    def resolve(self, name: str, has: Callable[[str], bool]) -> str | None:
        """The qualified name ``name`` means to this caller (:meth:`lookup`), or None. ``has``:
        whether a qualified name exists (servable, or refused at start: a refusal resolves as
        the adapter would, so only its owner learns of it)."""
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


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else of ``x-api-key``."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key", "").strip() or None


def _unauthorized() -> APIError:
    return APIError(
        401,
        "Invalid or missing API key; send 'Authorization: Bearer <key>' or 'x-api-key'.",
        param=None,
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def caller(table: KeyTable, headers: Mapping[str, str]) -> Principal:
    """The principal the request headers authenticate: :data:`OPEN` without configured keys,
    else the key's; 401 (OpenAI's shape) without a known key."""
    if not table:
        return OPEN
    key = presented_key(headers)
    principal = table.lookup(key) if key is not None else None
    if principal is None:
        raise _unauthorized()
    return principal


def authenticate(request: Request) -> Principal:
    """The caller of a ``/v1`` (or ``/generate``) route; 401 without a known key when keys are
    configured. ``/health`` and ``/ready`` never ask; ``/metrics`` asks :func:`full_metrics`.
    The same check already ran on the request's headers before its body was read
    (:class:`~loraplex.api.key_gate.KeyGate`), which left the principal in ``request.state``."""
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        principal = caller(request.app.state.keys, request.headers)
    return principal


def full_metrics(request: Request, require_key: bool) -> bool:
    """Whether this ``/metrics`` caller reads every name plain (True) or the anonymous view,
    where tenants and their adapters are opaque labels (False).

    No keys configured: plain (there are no tenants). No key presented: the anonymous view,
    or a 401 with ``require_key`` (``--metrics-require-key``). A key whose role may
    :data:`SCRAPE` (``metrics``, ``admin``): plain. Any other known key: 403, so a scraper given
    a tenant's key fails loudly instead of reading a view it did not ask for; unknown: 401.
    """
    table: KeyTable = request.app.state.keys
    if not table:
        return True
    key = presented_key(request.headers)
    if key is None:
        if require_key:
            raise _unauthorized()
        return False
    principal = table.lookup(key)
    if principal is None:
        raise _unauthorized()
    principal.require(SCRAPE)
    return True


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def allow(permission: str) -> Any:
    """A route dependency: 403 unless the caller's role has ``permission`` (401 first)."""

    def check(principal: PrincipalDep) -> None:
        principal.require(permission)

    return Depends(check)
