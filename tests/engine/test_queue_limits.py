"""QueueLimits (the 429 caps): the caps in all and per tenant, and Retry-After from the drain rate
(host-side, no model; a fake clock)."""

from __future__ import annotations

import pytest

from loraplex.engine.errors import QueueFullError
from loraplex.engine.queue_limits import MAX_RETRY_S, QueueLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_total_cap_refuses_the_next_request_until_one_starts() -> None:
    ctl = QueueLimits(max_queued=2)
    ctl.enqueue("a")
    ctl.enqueue("b")
    with pytest.raises(QueueFullError, match="--max-queued-requests 2"):
        ctl.enqueue("c")
    assert ctl.queued == 2 and ctl.rejected == {"c": 1}
    ctl.started("a")
    ctl.enqueue("c")
    assert ctl.queued == 2 and ctl.queued_by("c") == 1


def test_tenant_cap_refuses_only_that_tenant() -> None:
    ctl = QueueLimits(max_queued=10, max_queued_per_tenant=2)
    ctl.enqueue("flood")
    ctl.enqueue("flood")
    with pytest.raises(QueueFullError, match="--max-queued-requests-per-tenant 2"):
        ctl.enqueue("flood")
    ctl.enqueue("other")  # another tenant is still admitted
    ctl.left("flood")  # one left without running (aborted): its place is free again
    ctl.enqueue("flood")
    assert ctl.queued_by("flood") == 2 and ctl.queued_by("other") == 1


def test_check_reserves_nothing() -> None:
    ctl = QueueLimits(max_queued=1)
    ctl.check("a")
    ctl.check("a")
    assert ctl.queued == 0
    ctl.enqueue("a")
    with pytest.raises(QueueFullError):
        ctl.check("b")


def test_retry_after_follows_the_drain_rate() -> None:
    clock = Clock()
    ctl = QueueLimits(max_queued=4, clock=clock)
    for _ in range(4):
        ctl.enqueue("t")
    with pytest.raises(QueueFullError) as cold:
        ctl.enqueue("t")
    assert cold.value.retry_after == 1  # no start seen yet: nothing to estimate from
    # 4 starts over 8 s: 0.5 requests/s. After they start, refill the queue.
    for _ in range(4):
        clock.now += 2.0
        ctl.started("t")
        ctl.enqueue("t")
    assert ctl.drain_rate() == pytest.approx(4 / 6.0)  # the first start to now: 6 s
    with pytest.raises(QueueFullError) as warm:
        ctl.enqueue("t")
    assert warm.value.retry_after == 2  # one place frees in 1 / (4/6) = 1.5 s -> 2


def test_retry_after_for_a_tenant_counts_the_tenants_sharing_the_rate() -> None:
    clock = Clock()
    ctl = QueueLimits(max_queued=100, max_queued_per_tenant=3, clock=clock)
    for _ in range(10):  # 10 starts within 10 s: 1 request/s
        ctl.enqueue("x")
        clock.now += 1.0
        ctl.started("x")
    for tenant in ("a", "a", "a", "b"):
        ctl.enqueue(tenant)
    with pytest.raises(QueueFullError) as refused:
        ctl.enqueue("a")
    # Round-robin between a and b: a drains at 0.5/s; one place in 2 s.
    assert refused.value.retry_after == 2


def test_retry_after_is_capped_and_old_starts_are_forgotten() -> None:
    clock = Clock()
    ctl = QueueLimits(max_queued=1, clock=clock)
    ctl.enqueue("t")
    ctl.started("t")
    ctl.enqueue("t")
    clock.now += 1000.0  # nothing started since: no rate is known, so retry soon
    with pytest.raises(QueueFullError) as refused:
        ctl.enqueue("t")
    assert refused.value.retry_after == 1
    assert ctl.drain_rate() == 0.0
    clock.now += 1.0
    ctl.started("t")
    for _ in range(200):
        ctl.enqueue("t")
        ctl.started("t")
    ctl.enqueue("t")
    clock.now += 29.0
    with pytest.raises(QueueFullError) as slow:
        ctl.enqueue("t")
    assert 1 <= slow.value.retry_after <= MAX_RETRY_S


def test_releasing_more_than_admitted_is_a_bug() -> None:
    ctl = QueueLimits(max_queued=None)
    with pytest.raises(RuntimeError):
        ctl.started("t")


def test_caps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        QueueLimits(max_queued=0)
    with pytest.raises(ValueError):
        QueueLimits(max_queued=1, max_queued_per_tenant=0)


def test_every_refusal_is_counted_with_its_tenant() -> None:
    controller = QueueLimits(1)
    controller.enqueue("acme")
    for tenant in ("globex", "acme"):
        with pytest.raises(QueueFullError):
            controller.enqueue(tenant)
    assert controller.rejected == {"globex": 1, "acme": 1}
