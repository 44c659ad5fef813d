"""AdmissionController: the caps in all and per tenant, and Retry-After from the drain rate
(host-side, no model; a fake clock)."""

from __future__ import annotations

import pytest

from loraplex.engine.admission import MAX_RETRY_S, AdmissionController, QueueFullError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_total_cap_refuses_the_next_request_until_one_starts() -> None:
    ctl = AdmissionController(max_queued=2)
    ctl.admit("a")
    ctl.admit("b")
    with pytest.raises(QueueFullError, match="--max-queued-requests 2"):
        ctl.admit("c")
    assert ctl.queued == 2 and ctl.rejected == {"c": 1}
    ctl.started("a")
    ctl.admit("c")
    assert ctl.queued == 2 and ctl.queued_by("c") == 1


def test_tenant_cap_refuses_only_that_tenant() -> None:
    ctl = AdmissionController(max_queued=10, max_queued_per_tenant=2)
    ctl.admit("flood")
    ctl.admit("flood")
    with pytest.raises(QueueFullError, match="--max-queued-requests-per-tenant 2"):
        ctl.admit("flood")
    ctl.admit("other")  # another tenant is still admitted
    ctl.left("flood")  # one left without running (aborted): its place is free again
    ctl.admit("flood")
    assert ctl.queued_by("flood") == 2 and ctl.queued_by("other") == 1


def test_check_reserves_nothing() -> None:
    ctl = AdmissionController(max_queued=1)
    ctl.check("a")
    ctl.check("a")
    assert ctl.queued == 0
    ctl.admit("a")
    with pytest.raises(QueueFullError):
        ctl.check("b")


def test_retry_after_follows_the_drain_rate() -> None:
    clock = Clock()
    ctl = AdmissionController(max_queued=4, clock=clock)
    for _ in range(4):
        ctl.admit("t")
    with pytest.raises(QueueFullError) as cold:
        ctl.admit("t")
    assert cold.value.retry_after == 1  # no start seen yet: nothing to estimate from
    # 4 starts over 8 s: 0.5 requests/s. After they start, refill the queue.
    for _ in range(4):
        clock.now += 2.0
        ctl.started("t")
        ctl.admit("t")
    assert ctl.drain_rate() == pytest.approx(4 / 6.0)  # the first start to now: 6 s
    with pytest.raises(QueueFullError) as warm:
        ctl.admit("t")
    assert warm.value.retry_after == 2  # one place frees in 1 / (4/6) = 1.5 s -> 2


def test_retry_after_for_a_tenant_counts_the_tenants_sharing_the_rate() -> None:
    clock = Clock()
    ctl = AdmissionController(max_queued=100, max_queued_per_tenant=3, clock=clock)
    for _ in range(10):  # 10 starts within 10 s: 1 request/s
        ctl.admit("x")
        clock.now += 1.0
        ctl.started("x")
    for tenant in ("a", "a", "a", "b"):
        ctl.admit(tenant)
    with pytest.raises(QueueFullError) as refused:
        ctl.admit("a")
    # Round-robin between a and b: a drains at 0.5/s; one place in 2 s.
    assert refused.value.retry_after == 2


def test_retry_after_is_capped_and_old_starts_are_forgotten() -> None:
    clock = Clock()
    ctl = AdmissionController(max_queued=1, clock=clock)
    ctl.admit("t")
    ctl.started("t")
    ctl.admit("t")
    clock.now += 1000.0  # nothing started since: no rate is known, so retry soon
    with pytest.raises(QueueFullError) as refused:
        ctl.admit("t")
    assert refused.value.retry_after == 1
    assert ctl.drain_rate() == 0.0
    clock.now += 1.0
    ctl.started("t")
    for _ in range(200):
        ctl.admit("t")
        ctl.started("t")
    ctl.admit("t")
    clock.now += 29.0
    with pytest.raises(QueueFullError) as slow:
        ctl.admit("t")
    assert 1 <= slow.value.retry_after <= MAX_RETRY_S


def test_releasing_more_than_admitted_is_a_bug() -> None:
    ctl = AdmissionController(max_queued=None)
    with pytest.raises(RuntimeError):
        ctl.started("t")


def test_caps_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdmissionController(max_queued=0)
    with pytest.raises(ValueError):
        AdmissionController(max_queued=1, max_queued_per_tenant=0)


def test_every_refusal_is_counted_with_its_tenant() -> None:
    controller = AdmissionController(1)
    controller.admit("acme")
    for tenant in ("globex", "acme"):
        with pytest.raises(QueueFullError):
            controller.admit(tenant)
    assert controller.rejected == {"globex": 1, "acme": 1}
