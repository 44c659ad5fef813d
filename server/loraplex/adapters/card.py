"""What the API shows about an adapter, and the identity every cache keys it by."""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.adapters.peft_config import PeftConfig
from loraplex.adapters.tenancy import AdapterId


def adapter_key(name: str, version: str) -> str:
    """``name@sha`` prefix: a replaced adapter never aliases the weights of its old version."""
    return f"{name}@{version[:16]}"


def adapter_name(key: str) -> str:
    """The name in a key made by :func:`adapter_key` (what a client puts in ``model``); a
    per-request mix's key has no ``@`` and is returned whole."""
    return key.split("@")[0]


@dataclass(frozen=True)
class AdapterCard:
    """One registered adapter version: its checked config and the store's metadata.

    ``version`` is the sha256 of its weights file; rank, alpha and targets are the config's.
    ``name`` is qualified (``name`` public, ``tenant/name`` owned), so ``key`` is unique across
    tenants even when two of them upload the same weights under the same name.
    """

    name: str
    version: str
    config: PeftConfig
    size_bytes: int
    created: int
    description: str | None = None
    pinned: bool = False

    @property
    def id(self) -> AdapterId:
        return AdapterId.parse(self.name)

    @property
    def owner(self) -> str | None:
        """The tenant that owns it; None: public (present at start, or an admin's public=true)."""
        return self.id.owner

    @property
    def key(self) -> str:
        return adapter_key(self.name, self.version)

    @property
    def rank(self) -> int:
        return self.config.r

    @property
    def alpha(self) -> float:
        return self.config.lora_alpha

    @property
    def target_modules(self) -> tuple[str, ...]:
        return self.config.target_names

    def to_dict(self) -> dict:
        return {
            "name": self.id.name,
            "owner": self.owner,
            "public": self.owner is None,
            "version": self.version,
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "target_parameters": list(self.config.target_parameters),
            "size_bytes": self.size_bytes,
            "created": self.created,
            "description": self.description,
            "pinned": self.pinned,
        }
