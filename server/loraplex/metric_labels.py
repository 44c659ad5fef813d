"""Bounded label values for per-adapter metrics (no torch, no prometheus_client).

Every label value is a time series Prometheus keeps forever, and a server with thousands of
uploaded adapters would make thousands per metric. So the first ``limit`` distinct adapter names
seen keep their own label and every later one is counted as ``other``: a counter's label may
never change once it has counted, so "the first N" is the stable form of "the top N" (on a
server whose busy adapters are loaded at start, they are also the most used).
"""

from __future__ import annotations

import threading

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
