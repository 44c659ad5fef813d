"""Per-tenant storage quotas: how many adapters, and how many bytes of adapter files, one tenant
may keep in the store (``--max-adapters-per-tenant``, ``--max-adapter-mb-per-tenant``).

Counted from the store itself (``AdapterStore.sizes``), not from this process's catalog, so the
line holds across restarts and across replicas sharing the store. Within one process the check
and the write are serialized by the registry's write lock, so concurrent uploads of one tenant
cannot both pass; replicas writing at the same instant may each pass once (no lock spans them).
Public adapters (an admin's, or any upload on a server without keys) are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loraplex.adapters.errors import AdapterQuotaError
from loraplex.adapters.rules import CONFIG_FILE, WEIGHTS_FILE
from loraplex.adapters.store import AdapterStore
from loraplex.adapters.tenancy import AdapterId

__all__ = ["TenantQuota"]

COUNT_OPTION = "--max-adapters-per-tenant"
BYTES_OPTION = "--max-adapter-mb-per-tenant"


@dataclass(frozen=True)
class TenantQuota:
    """``max_adapters`` adapters and ``max_bytes`` bytes (config + weights files) per tenant;
    0 is no limit."""

    max_adapters: int = 0
    max_bytes: int = 0

    def enforce(self, store: AdapterStore, ident: AdapterId, folder: Path) -> None:
        """:meth:`check` storing ``folder`` (its config and weights) as ``ident``, against what
        ``store`` holds of its tenant now; public adapters and a missing file (the folder check
        names it) pass."""
        if ident.owner is None or not (self.max_adapters or self.max_bytes):
            return
        try:
            size = sum((Path(folder) / f).stat().st_size for f in (CONFIG_FILE, WEIGHTS_FILE))
        except FileNotFoundError:
            return
        self.check(ident, size, store.sizes(ident.owner))

    def check(self, ident: AdapterId, new_bytes: int, stored: Mapping[str, int]) -> None:
        """Raise :class:`AdapterQuotaError` if storing ``new_bytes`` as ``ident`` takes its
        tenant past a limit. ``stored``: qualified name -> bytes of each adapter the tenant
        keeps now; replacing one of them frees its bytes and adds no adapter."""
        tenant = ident.owner
        if tenant is None:
            return
        after = dict(stored)
        after[ident.qualified] = new_bytes
        count, total = len(after), sum(after.values())
        if self.max_adapters and count > self.max_adapters and ident.qualified not in stored:
            raise AdapterQuotaError(
                f"tenant {tenant!r} keeps {len(stored)} adapters, the most {COUNT_OPTION} "
                f"({self.max_adapters}) allows; delete one or replace one (replace=true)",
                COUNT_OPTION,
            )
        if self.max_bytes and total > self.max_bytes and total > sum(stored.values()):
            mib = 2**20
            raise AdapterQuotaError(
                f"tenant {tenant!r} would keep {total / mib:.1f} MiB of adapters with this one "
                f"({new_bytes / mib:.1f} MiB); {BYTES_OPTION} allows "
                f"{self.max_bytes / mib:.1f} MiB: delete some first",
                BYTES_OPTION,
            )
