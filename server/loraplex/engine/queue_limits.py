"""Queue limits: a bounded queue, per tenant and in all, answered with "retry later".

Host-side bookkeeping only (no torch), called from the event loop. A request is *queued* from
:meth:`QueueLimits.enqueue` until it starts running (:meth:`started`, when its first
output arrives) or leaves without running (:meth:`left`). Past ``max_queued`` requests queued
in all, or ``max_queued_per_tenant`` of one tenant, ``enqueue`` raises :class:`QueueFullError`
before any work is done, with a ``Retry-After`` estimated from the queue's drain rate:

    rate  = starts in the last WINDOW_S seconds / the time they span up to now   (requests/s)
    retry = ceil(queued_ahead / rate), clamped to [1, MAX_RETRY_S]

For one tenant's cap the scheduler serves tenants round-robin (engine/sched/waiting_queue.py), so
that tenant drains at ``rate / active tenants`` and ``queued_ahead`` is its own queue.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

from loraplex.engine.errors import QueueFullError

WINDOW_S = 30.0  # the drain rate looks this far back
MAX_RETRY_S = 60  # never tell a client to come back later than this
_MAX_STARTS = 512  # starts remembered for the rate (a bounded deque)


class QueueLimits:
    """Counts queued requests in all and per tenant; refuses past the caps (None: no cap)."""

    def __init__(
        self,
        max_queued: int | None,
        max_queued_per_tenant: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queued is not None and max_queued <= 0:
            raise ValueError("max_queued must be positive or None")
        if max_queued_per_tenant is not None and max_queued_per_tenant <= 0:
            raise ValueError("max_queued_per_tenant must be positive or None")
        self.max_queued = max_queued
        self.max_queued_per_tenant = max_queued_per_tenant
        self._clock = clock
        self._lock = threading.Lock()
        self._queued: Counter[str] = Counter()
        self._starts: deque[float] = deque(maxlen=_MAX_STARTS)
        # Refusals by tenant (the server's 429 counter is api/errors.py's: it sees every 429).
        self.rejected: Counter[str] = Counter()

    @property
    def queued(self) -> int:
        return self._queued.total()

    def queued_by(self, tenant: str) -> int:
        return self._queued[tenant]

    def check(self, tenant: str) -> None:
        """Raise :class:`QueueFullError` if ``enqueue(tenant)`` would; reserves nothing (routes
        call it before tokenizing, so a refused request costs nothing)."""
        with self._lock:
            self._refuse_if_full(tenant)

    def enqueue(self, tenant: str) -> None:
        """Count one more queued request of ``tenant``, or raise :class:`QueueFullError`."""
        with self._lock:
            self._refuse_if_full(tenant)
            self._queued[tenant] += 1

    def started(self, tenant: str) -> None:
        """One of ``tenant``'s queued requests began running (it feeds the drain rate)."""
        with self._lock:
            self._release(tenant)
            self._starts.append(self._clock())

    def left(self, tenant: str) -> None:
        """One of ``tenant``'s queued requests left without running (aborted, failed)."""
        with self._lock:
            self._release(tenant)

    def drain_rate(self) -> float:
        """Requests per second that left the queue for a running batch, lately (0: none)."""
        with self._lock:
            return self._rate()

    def _release(self, tenant: str) -> None:
        if self._queued[tenant] <= 0:
            raise RuntimeError(f"tenant {tenant!r} has no queued request to release")
        self._queued[tenant] -= 1
        if not self._queued[tenant]:
            del self._queued[tenant]

    def _rate(self) -> float:
        now = self._clock()
        while self._starts and now - self._starts[0] > WINDOW_S:
            self._starts.popleft()
        if not self._starts:
            return 0.0
        # At least one second of span: a burst of starts within a tick is not an infinite rate.
        return len(self._starts) / max(now - self._starts[0], 1.0)

    def _retry_after(self, ahead: int, share: int) -> int:
        rate = self._rate()
        if rate <= 0:
            return 1
        return max(1, min(MAX_RETRY_S, math.ceil(ahead * share / rate)))

    def _reject(self, tenant: str) -> None:
        self.rejected[tenant] += 1

    def _refuse_if_full(self, tenant: str) -> None:
        total, mine = self._queued.total(), self._queued[tenant]
        if self.max_queued is not None and total >= self.max_queued:
            self._reject(tenant)
            raise QueueFullError(
                f"The server's queue is full ({total} requests waiting, --max-queued-requests "
                f"{self.max_queued}); retry later.",
                self._retry_after(total - self.max_queued + 1, 1),
            )
        cap = self.max_queued_per_tenant
        if cap is not None and mine >= cap:
            self._reject(tenant)
            raise QueueFullError(
                f"Too many requests of yours are waiting ({mine}, "
                f"--max-queued-requests-per-tenant {cap}); retry later.",
                self._retry_after(mine - cap + 1, max(len(self._queued), 1)),
            )
