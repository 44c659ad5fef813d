"""Bounded label values for per-adapter metrics, and what an anonymous scrape may show of them
(no torch, no prometheus_client).

Every label value is a time series Prometheus keeps forever, and a server with thousands of
uploaded adapters would make thousands per metric. So the first ``limit`` distinct adapter names
seen keep their own label and every later one is counted as ``other``: a counter's label may
never change once it has counted, so "the first N" is the stable form of "the top N" (on a
server whose busy adapters are loaded at start, they are also the most used).

Names are qualified (``name`` public, ``tenant/name`` a tenant's own). A scrape without a key
(the gateway's endpoint picker, a keyless Prometheus) sees tenants' adapters and tenants only as
opaque labels (:class:`PrivateLabels`); ``api/auth.py`` decides who reads the plain view.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping

BASE_LABEL = "base"  # a request without an adapter
OTHER_LABEL = "other"  # an adapter past the limit
MIX_LABEL = "mix"  # a per-request weighted mix (its key starts with "+", no name does)


class AdapterLabels:
    """Adapter name -> label value, with at most ``limit`` distinct names (plus base, other)."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()  # the engine thread and the loader threads both label
        self._known: set[str] = set()
        self.limit = 0
        self.set_limit(limit)

    def set_limit(self, limit: int) -> None:
        """Change the limit (at start, from the config); names already labelled keep theirs."""
        if limit < 0:
            raise ValueError("the adapter label limit must be >= 0")
        with self._lock:
            self.limit = limit

    def label(self, name: str) -> str:
        if name.startswith("+"):
            return MIX_LABEL
        with self._lock:
            if name in self._known:
                return name
            if len(self._known) < self.limit:
                self._known.add(name)
                return name
        return OTHER_LABEL


# ---- what an anonymous scrape may show ---------------------------------------------------

PRIVATE_PREFIX = "private-"  # an opaque stand-in for one tenant's adapter
TENANT_PREFIX = "tenant-"  # an opaque stand-in for one tenant
ADAPTER_KEYS = ("adapter",)  # label keys whose value is one adapter name
ADAPTER_LIST_KEYS = ("running_lora_adapters", "waiting_lora_adapters")  # comma-separated names
TENANT_KEYS = ("tenant",)


def label_secret(key_digests: Iterable[str]) -> bytes:
    """The HMAC key of :class:`PrivateLabels`, derived from every accepted API key's sha256.

    Replicas given the same keys file derive the same secret, so one adapter has one opaque
    label in every replica's scrape and across restarts; nobody without every key can derive
    it, so the labels cannot be reversed by trying names. Changing the keys changes the labels.
    """
    material = "\n".join(sorted(key_digests)).encode()
    return hashlib.sha256(b"loraplex metric labels\0" + material).digest()


class PrivateLabels:
    """Label values as an anonymous ``/metrics`` scrape shows them: a tenant's adapter
    (``tenant/name``) becomes ``private-<12 hex>`` and a tenant ``tenant-<12 hex>``, each the
    truncated HMAC-SHA256 of the name under :func:`label_secret`: stable (a series stays one
    series, the gateway sees one adapter as one entry), distinct (2^48 values), opaque.
    Public adapters and the fixed labels (base, other, mix) keep their values: every client
    sends public names, so the gateway's LoRA affinity matches them."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _digest(self, kind: str, value: str) -> str:
        message = f"{kind}\0{value}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:12]

    def adapter(self, name: str) -> str:
        """A qualified name: ``tenant/name`` -> opaque; a public name is kept."""
        return PRIVATE_PREFIX + self._digest("adapter", name) if "/" in name else name

    def tenant(self, tenant: str) -> str:
        return TENANT_PREFIX + self._digest("tenant", tenant)

    def relabel(self, labels: Mapping[str, str]) -> dict[str, str]:
        """One sample's labels with every adapter and tenant value made opaque."""
        out = dict(labels)
        for key, value in labels.items():
            if key in ADAPTER_KEYS:
                out[key] = self.adapter(value)
            elif key in ADAPTER_LIST_KEYS:
                out[key] = ",".join(self.adapter(n) for n in value.split(",")) if value else ""
            elif key in TENANT_KEYS:
                out[key] = self.tenant(value)
        return out
