"""Who owns an adapter: an :class:`AdapterId` is ``(owner, name)``; ``owner=None`` is public.

Three spellings of one id, each used in one place:

- the *qualified* name, ``name`` (public) or ``tenant/name``: what the registry, the engine's
  adapter keys (``tenant/name@sha``) and an admin's requests use;
- the *stored* name, ``name`` or ``tenant@name``: one flat folder or object prefix per adapter
  (no "/" in a folder name; "@" is in no adapter or tenant name, so it cannot collide);
- the bare ``name`` a tenant uses for its own adapters and the public ones.

The namespace rules (what a name means to a tenant, what it sees, where its upload goes) are
here too, below; the API adds only who may do what (``api/auth.py``).

No torch here: the stores use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from loraplex.adapters.errors import AdapterError, AdapterExistsError, AdapterValidationError
from loraplex.adapters.rules import validate_name

DEFAULT_TENANT = "default"  # the tenant of --api-key, and of every caller when no key is set
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)
QUALIFIED_SEP = "/"
STORED_SEP = "@"

__all__ = [
    "DEFAULT_TENANT",
    "STORED_SEP",
    "TENANT_PATTERN",
    "AdapterId",
    "display_name",
    "is_stored_name",
    "resolve",
    "sees",
    "shown",
    "upload_id",
    "validate_tenant",
]


def validate_tenant(tenant: object) -> str:
    """A tenant id is 1-64 of ``A-Z a-z 0-9 _ -``, starting with a letter or digit."""
    if not isinstance(tenant, str) or _TENANT.fullmatch(tenant) is None:
        raise AdapterValidationError(
            f"invalid tenant {tenant!r}: use 1-64 characters from A-Z a-z 0-9 _ - "
            "starting with a letter or digit"
        )
    return tenant


@dataclass(frozen=True)
class AdapterId:
    """One adapter's identity: its owning tenant (None: public) and its name."""

    owner: str | None
    name: str

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.owner is not None:
            validate_tenant(self.owner)

    @property
    def public(self) -> bool:
        return self.owner is None

    @property
    def qualified(self) -> str:
        return self.name if self.owner is None else f"{self.owner}{QUALIFIED_SEP}{self.name}"

    @property
    def stored(self) -> str:
        return self.name if self.owner is None else f"{self.owner}{STORED_SEP}{self.name}"

    @classmethod
    def parse(cls, qualified: object) -> AdapterId:
        """``name`` -> public; ``tenant/name`` -> owned (both parts validated)."""
        if isinstance(qualified, AdapterId):
            return qualified
        if isinstance(qualified, str) and QUALIFIED_SEP in qualified:
            owner, _, name = qualified.partition(QUALIFIED_SEP)
            try:
                return cls(owner, name)
            except AdapterValidationError as exc:
                raise AdapterValidationError(
                    f"invalid adapter name {qualified!r}: a tenant's adapter is tenant/name; {exc}"
                ) from None
        return cls(None, validate_name(qualified))

    @classmethod
    def from_stored(cls, stored: str) -> AdapterId:
        owner, sep, name = stored.partition(STORED_SEP)
        return cls(owner, name) if sep else cls(None, stored)


def stored_name(qualified: object) -> str:
    """The store's flat name for a qualified one (validated: it can form no path or key)."""
    return AdapterId.parse(qualified).stored


def is_stored_name(entry: str) -> bool:
    """Whether a folder or object prefix of a store is an adapter's stored name."""
    try:
        AdapterId.from_stored(entry)
    except AdapterValidationError:
        return False
    return True


# ---- namespace rules: what a name means to a tenant ----------------------------------------
# A tenant's adapter ``support`` is ``<tenant>/support`` in the registry; the tenant names it
# ``support``. Public adapters are seen by everyone under their bare name. Another tenant's
# adapter resolves to nothing, so it is as unknown as a name nobody has; a caller that may reach
# every tenant (an admin) names one as ``tenant/name``.

T = TypeVar("T")


def sees(owner: str | None, tenant: str, any_tenant: bool = False) -> bool:
    """Whether ``tenant`` sees an adapter of ``owner`` (None: public)."""
    return owner is None or owner == tenant or any_tenant


def display_name(ident: AdapterId, tenant: str) -> str:
    """``name`` for ``tenant``'s own and public adapters, ``owner/name`` for another's."""
    return ident.name if ident.owner in (None, tenant) else ident.qualified


def shown(
    idents: Iterable[AdapterId], tenant: str, any_tenant: bool = False
) -> list[tuple[AdapterId, str]]:
    """(id, display name) of every id ``tenant`` sees, as :func:`resolve` finds them: a public
    adapter that the tenant's own namesake shadows is left out."""
    seen = [ident for ident in idents if sees(ident.owner, tenant, any_tenant)]
    own = {ident.name for ident in seen if ident.owner == tenant}
    return [
        (ident, display_name(ident, tenant))
        for ident in seen
        if not (ident.owner is None and ident.name in own)
    ]


def resolve(
    name: str, tenant: str, find: Callable[[str], T | None], any_tenant: bool = False
) -> T | None:
    """What ``name`` means to ``tenant``: ``find`` (a lookup by qualified name) of its own
    adapter first, then of a public one; None when unknown, invalid, or another tenant's."""
    try:
        ident = AdapterId.parse(name)
    except AdapterError:
        return None
    if ident.owner is not None:  # spelled tenant/name
        return find(ident.qualified) if ident.owner == tenant or any_tenant else None
    own = find(AdapterId(tenant, ident.name).qualified)
    return own if own is not None else find(ident.name)


def upload_id(name: str, tenant: str, public: bool, has: Callable[[str], bool]) -> AdapterId:
    """The id an upload of the bare ``name`` by ``tenant`` creates or replaces: the public
    ``name`` when ``public``, else ``tenant/name``; a name a public adapter has is taken for
    every tenant (:class:`AdapterExistsError`)."""
    ident = AdapterId.parse(name)
    if public:
        return ident
    if has(ident.name):
        raise AdapterExistsError(f"a public adapter is named {ident.name!r}; pick another name")
    return AdapterId(tenant, ident.name)
