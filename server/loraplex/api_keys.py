"""API keys as the config holds them: a digest, a tenant and a role per key; and the loader of
``--api-keys-file``.

The file is JSON, read once at start::

    {"keys": [{"key": "sk-...", "tenant": "acme", "role": "admin"},
              {"sha256": "<64 hex digits: sha256 of the key's UTF-8>", "tenant": "globex",
               "role": "user"}]}

Plain keys are hashed as they are read, so only digests are kept. Every problem is a
``ValueError`` naming the file and the entry, raised before the server starts. What a role may
do, and how a presented key is checked, is in ``api/auth.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.tenancy import TENANT_PATTERN

ROLES = ("admin", "user", "inference", "metrics")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_TENANT = re.compile(TENANT_PATTERN)

__all__ = ["ROLES", "ApiKeyEntry", "key_digest", "load_api_keys_file"]


def key_digest(key: str) -> str:
    """The hex sha256 of a key's UTF-8 bytes: what the table stores and compares."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKeyEntry:
    """One accepted key, by its digest: requests with it act as ``role`` of ``tenant``."""

    sha256: str
    tenant: str
    role: str

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or _HEX64.fullmatch(self.sha256) is None:
            raise ValueError("sha256 must be 64 lowercase hex digits (the sha256 of the key)")
        if not isinstance(self.tenant, str) or _TENANT.fullmatch(self.tenant) is None:
            raise ValueError(
                f"tenant {self.tenant!r} must be 1-64 of A-Z a-z 0-9 _ - starting with a "
                "letter or digit"
            )
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} must be one of {ROLES}")


def _entry(raw: object) -> ApiKeyEntry:
    if not isinstance(raw, dict):
        raise ValueError("must be an object with key or sha256, tenant and role")
    unknown = set(raw) - {"key", "sha256", "tenant", "role"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    if ("key" in raw) == ("sha256" in raw):
        raise ValueError("needs exactly one of key (plain) or sha256 (hashed)")
    for field in ("tenant", "role"):
        if field not in raw:
            raise ValueError(f"needs {field}")
    if "key" in raw:
        key = raw["key"]
        if not isinstance(key, str) or len(key) < 8 or key != key.strip():
            raise ValueError("key must be a string of at least 8 characters, no outer spaces")
        digest = key_digest(key)
    else:
        digest = raw["sha256"]
        if isinstance(digest, str):
            digest = digest.lower()
    return ApiKeyEntry(digest, raw["tenant"], raw["role"])


def load_api_keys_file(path: str | Path) -> tuple[ApiKeyEntry, ...]:
    """The entries of an ``--api-keys-file``; a ``ValueError`` names the file and the entry."""
    where = f"--api-keys-file {str(path)!r}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ValueError(f'{where}: needs {{"keys": [...]}} with at least one entry')
    entries: list[ApiKeyEntry] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(keys):
        try:
            entry = _entry(raw)
        except ValueError as exc:
            raise ValueError(f"{where}: keys[{i}]: {exc}") from None
        if entry.sha256 in seen:
            raise ValueError(f"{where}: keys[{i}]: the same key as keys[{seen[entry.sha256]}]")
        seen[entry.sha256] = i
        entries.append(entry)
    return tuple(entries)
