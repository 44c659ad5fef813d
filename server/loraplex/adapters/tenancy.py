"""Who owns an adapter: an :class:`AdapterId` is ``(owner, name)``; ``owner=None`` is public.

Three spellings of one id, each used in one place:

- the *qualified* name, ``name`` (public) or ``tenant/name``: what the registry, the engine's
  adapter keys (``tenant/name@sha``) and an admin's requests use;
- the *stored* name, ``name`` or ``tenant@name``: one flat folder or object prefix per adapter
  (no "/" in a folder name; "@" is in no adapter or tenant name, so it cannot collide);
- the bare ``name`` a tenant uses for its own adapters and the public ones.

No torch here: the stores use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from loraplex.adapters.errors import AdapterValidationError
from loraplex.adapters.rules import validate_name

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_TENANT = re.compile(TENANT_PATTERN)
QUALIFIED_SEP = "/"
STORED_SEP = "@"

__all__ = ["STORED_SEP", "TENANT_PATTERN", "AdapterId", "is_stored_name", "validate_tenant"]


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
