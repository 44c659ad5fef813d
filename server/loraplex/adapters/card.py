"""What the API shows about an adapter, and the identity every cache keys it by."""

from __future__ import annotations

from dataclasses import asdict, dataclass


def adapter_key(name: str, version: str) -> str:
    """``name@sha`` prefix: a replaced adapter never aliases the weights of its old version."""
    return f"{name}@{version[:16]}"


@dataclass(frozen=True)
class AdapterCard:
    """One registered adapter version. ``version`` is the sha256 of its weights file."""

    name: str
    version: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    size_bytes: int
    created: int
    description: str | None = None
    pinned: bool = False

    @property
    def key(self) -> str:
        return adapter_key(self.name, self.version)

    def to_dict(self) -> dict:
        return asdict(self) | {"target_modules": list(self.target_modules)}
