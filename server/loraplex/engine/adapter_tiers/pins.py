"""Server-wide caps on what one client can make the server hold for everyone: pinned slots
(``--max-pinned-loras``) and merged copies (``--max-merged-adapters``)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from loraplex.adapters.card import adapter_name
from loraplex.engine.errors import CapacityError


class PinBudget:
    """At most ``limit`` adapter names pinned at once, counting the pins of uploads in flight.

    ``reserve`` (before an upload is stored, any thread) and ``release`` (once it settled) make
    concurrent pinned uploads unable to overshoot; ``check`` (engine thread, right before the
    pin) guards the paths without a reservation (adapters pinned in the store at start).
    Replacing an adapter that is pinned already takes no new pin.
    """

    def __init__(self, limit: int, pinned_keys: Callable[[], frozenset[str]]) -> None:
        self.limit = limit
        self._pinned_keys = pinned_keys
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def names(self) -> set[str]:
        return {adapter_name(key) for key in self._pinned_keys()}

    def reserve(self, name: str) -> None:
        with self._lock:
            taken = self.names() | self._pending
            if name not in taken and len(taken) >= self.limit:
                raise self._full(len(taken))
            self._pending.add(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._pending.discard(name)

    def check(self, name: str) -> None:
        names = self.names()
        if name not in names and len(names) >= self.limit:
            raise self._full(len(names))

    def _full(self, taken: int) -> CapacityError:
        return CapacityError(
            "pinned",
            f"{taken} adapters are pinned already; at most {self.limit} may be pinned "
            "(--max-pinned-loras), so that the other adapters keep device slots",
        )
