"""Adapter-affinity admission: which waiting requests a step takes first (host-side, no torch).

When more requests wait than a step can take (its token, sequence and adapter-slot budgets),
plain admission walks the waiting queue in its fair order (preempted first, then the tenants
round-robin, FCFS within a tenant). With affinity on (``SchedulerConfig.adapter_affinity``),
each tenant's own requests are first sorted by what admitting them costs, lowest first:

    STARVED   passed over in ``max_skips`` steps already (the bound, below)
    FREE      no new slot: the base model, the step's pre-merged adapter, a pinned adapter,
              or an adapter already in this step's batch (a running sequence holds it)
    RESIDENT  a new slot of the step, but the adapter is already in a device slot: no load
    COLD      a slot and a load into it (or a pre-merged adapter this step cannot run)

Ties keep arrival order. Tiers are computed once per step, after the running sequences are
scheduled, so a cold adapter admitted in this step makes its other requests FREE from the next.

Fairness across tenants is untouched: the tenants' turns and their order are the fair order's
(``WaitingQueue.ordered``), affinity only chooses which of a tenant's requests fills each of its
turns, and preempted sequences stay first. So a tenant's hot requests overtake only that
tenant's colder ones, never another tenant's.

The bound: a ready request that is not admitted in a step where a later arrival of its tenant
is, was passed over by affinity and counts one ``adapter_skips``, as one whose adapter did not
fit does (at most one a step). After ``max_skips`` skips (``--adapter-affinity-max-skips``,
capped by the scheduler's ``starvation_steps``) it is STARVED: first in its tenant's order, so
no later request of its tenant overtakes it again; and once its adapter has not fitted in more
than ``starvation_steps`` steps, the scheduler's starvation guard gets it a slot (as without
affinity; ``engine/sched/fair_share.py``). So affinity passes a request
over in at most ``max_skips`` steps (later ones still pass a request whose adapter does not
fit, as without affinity, until the guard trips); ``max_skips=0`` gives the fair order. The
larger the bound, the fewer adapter loads and distinct adapters a step, and the longer the cold
tail's time to first token (``bench/NOTES.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from loraplex.config import SchedulerConfig
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sched.step_budget import StepBudget

STARVED, FREE, RESIDENT, COLD = range(4)


def admission_tier(
    seq: Sequence, budget: StepBudget, is_resident: Callable[[str], bool], max_skips: int
) -> int:
    """``seq``'s tier in this step (the module docstring); lower tiers are admitted first."""
    if seq.adapter_skips >= max_skips:
        return STARVED
    if budget.costs_nothing(seq):
        return FREE
    if not seq.merged and seq.adapter is not None and is_resident(seq.adapter):
        return RESIDENT
    return COLD


def step_order(
    config: SchedulerConfig,
    budget: StepBudget,
    is_resident: Callable[[str], bool],
    starvation_steps: int,
) -> Callable[[Sequence], int] | None:
    """The key ordering each tenant's waiting requests in this step: ``admission_tier`` with
    affinity on, None (arrival order) with it off."""
    if not config.adapter_affinity:
        return None
    # At most the guard's bound: one more skip would trip the guard.
    max_skips = min(config.adapter_affinity_max_skips, starvation_steps)
    return partial(admission_tier, budget=budget, is_resident=is_resident, max_skips=max_skips)


def overtaken(
    order: Iterable[Sequence], admitted: Iterable[Sequence], is_ready: Callable[[Sequence], bool]
) -> list[Sequence]:
    """The ready sequences of ``order`` not admitted although a later arrival of the same
    tenant was: each was passed over by affinity in this step. O(len(order))."""
    latest: dict[str, tuple[float, int]] = {}
    taken: set[int] = set()
    for seq in admitted:
        taken.add(seq.seq_id)
        arrival = (seq.arrival_time, seq.seq_id)
        latest[seq.tenant] = max(latest.get(seq.tenant, arrival), arrival)
    return [
        seq
        for seq in order
        if seq.seq_id not in taken
        and seq.tenant in latest
        and (seq.arrival_time, seq.seq_id) < latest[seq.tenant]
        and is_ready(seq)
    ]
