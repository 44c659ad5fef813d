"""Fair shares of the KV cache and of adapter slots between tenants (host-side, no torch).

One tenant's load must never starve another's. The scheduler (``engine/scheduler.py``) applies
these rules only where blocks or slots are short; with a single tenant the block rules reduce
to the plain ones (preempt the latest arrival, FCFS on memory).

KV blocks. In a step, the *active* tenants are those with a sequence running or waiting. Each
one's share is an equal part of the cache, ``num_blocks / active``; its usage is the blocks in
its running sequences' tables (a prefix block that k of them share counts k times); its excess
is ``usage - share`` (kept as ``usage * active - num_blocks``: integers, no rounding).

- Preempt the furthest over its share first. When a running sequence's chunk lacks blocks, the
  victim is the candidate whose tenant has the largest excess, its latest arrival first. The
  candidates are the sequences not yet scheduled in the step (as with one tenant) plus those
  already scheduled whose tenant is further over its share than the asking one's.
- Under-share tenants are admitted ahead. A waiting request that does not fit stops admission
  behind it (FCFS on memory) only if its tenant is under its share; one of a tenant at or over
  its share is passed over, and from then on the step admits only tenants under their share.
  So a preempted sequence of an over-share tenant never blocks an under-share tenant.
- Reclaim. A waiting request that does not fit, of a tenant under its share that stays within
  it once the request is admitted, preempts running sequences of other tenants over their share
  (furthest over first, latest arrival first) until it fits, in the same step.
- Progress. The oldest running sequence is never preempted for another's sake, so it always
  finishes: when sequences that cannot fit together contend, the oldest goes first (a single
  sequence holding most of the cache is the one thing a quiet tenant still waits for).
- A tenant that had a sequence preempted in a step is not admitted in that step: the blocks just
  freed must not go straight back to it (with one tenant: no admission after a preemption).

Adapter slots. A tenant holds the distinct slot-taking adapters (not pre-merged, not pinned) of
its sequences in the step; an adapter two tenants run counts for both.

- Balance. A waiting request that needs a new slot when every one is taken takes one from the
  tenant holding the most, if that tenant holds at least two more than the asking one: all the
  running sequences of that tenant's adapter with the fewest of them (latest arrival on ties)
  are preempted. Holdings even out to ``max_loras / tenants`` each and never flip back.
- Guard. A request passed over for its slot more than ``starvation_steps`` times takes one the
  same way from the tenant holding the most, its own tenant included, but only an adapter whose
  oldest running sequence has run ``starvation_steps`` steps (it had its turn); after twice as
  many skips, any adapter (a request of another pre-merged adapter than the step's takes the
  step's: all its sequences are preempted). While no slot can be taken for it, no later request
  that needs a new slot is admitted. So a request waits about ``2 * starvation_steps`` steps
  at most for a slot, and slots rotate between more adapters than there are slots without
  thrashing. Preempted sequences keep their output and recompute their KV (their full blocks
  usually revive from the prefix cache).
- A request that needs no new slot (the base model, a pinned or pre-merged adapter, an adapter
  already in the step) is never held behind a slot wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from loraplex.engine.sequence import Sequence


class BlockShares:
    """KV-block usage per tenant through one step, against each active tenant's equal share."""

    def __init__(
        self, running: Iterable[Sequence], waiting_tenants: Iterable[str], num_blocks: int
    ) -> None:
        self.usage: Counter[str] = Counter()
        self.oldest: Sequence | None = None  # the oldest running sequence: never a victim
        for seq in running:
            self.usage[seq.tenant] += len(seq.block_table)
            if self.oldest is None or seq.arrival_key < self.oldest.arrival_key:
                self.oldest = seq
        self.active = max(1, len(set(self.usage).union(waiting_tenants)))
        self.num_blocks = num_blocks

    def charge(self, tenant: str, blocks: int) -> None:
        """``tenant``'s sequences took (``blocks`` > 0) or gave back (< 0) blocks."""
        self.usage[tenant] += blocks

    def excess(self, tenant: str, extra: int = 0) -> int:
        """``(usage + extra - share) * active``: positive when over its share."""
        return (self.usage[tenant] + extra) * self.active - self.num_blocks

    def under(self, tenant: str) -> bool:
        return self.excess(tenant) < 0

    def further_over(self, asking: Sequence, seqs: Iterable[Sequence]) -> list[Sequence]:
        """Those of ``seqs`` whose tenant is further over its share than ``asking``'s."""
        limit = self.excess(asking.tenant)
        return [seq for seq in seqs if self.excess(seq.tenant) > limit]

    def victim(self, asking: Sequence, candidates: Iterable[Sequence]) -> Sequence:
        """Whom to preempt so that ``asking``'s chunk fits: of ``asking`` and ``candidates``
        (the oldest running sequence excluded, unless it is ``asking``), the one whose tenant is
        furthest over its share, latest arrival first."""
        pool = [seq for seq in candidates if seq is not self.oldest and seq is not asking]
        return max([*pool, asking], key=self._victim_key)

    def may_reclaim(self, tenant: str, blocks: int) -> bool:
        """Whether a waiting request of ``tenant`` needing ``blocks`` may preempt others: its
        tenant is under its share and stays within it with them."""
        return self.under(tenant) and self.excess(tenant, blocks) <= 0

    def reclaim_victim(self, asking: Sequence, running: Iterable[Sequence]) -> Sequence | None:
        """A running sequence of another tenant over its share to preempt for the waiting
        ``asking`` (the furthest over first, its latest arrival first), or None."""
        pool = [
            seq
            for seq in running
            if seq.tenant != asking.tenant
            and seq is not self.oldest
            and self.excess(seq.tenant) > 0
        ]
        return max(pool, key=self._victim_key, default=None)

    def _victim_key(self, seq: Sequence) -> tuple[int, tuple[float, int]]:
        return (self.excess(seq.tenant), seq.arrival_key)


class SlotHolders:
    """Who holds the step's adapter slots: its sequences grouped by slot-taking adapter, and how
    many adapters each tenant holds. ``evictable``: whether a sequence may be preempted now (it
    ran before this step, rather than being admitted in it); ``step``: the scheduler's count of
    steps, against which ``Sequence.admitted_step`` tells how long a sequence has run."""

    def __init__(
        self,
        seqs: Iterable[Sequence],
        pinned: frozenset[str],
        evictable: Callable[[Sequence], bool],
        step: int,
        starvation_steps: int,
    ) -> None:
        self.starvation_steps = starvation_steps
        self.groups: dict[str, list[Sequence]] = {}
        self.merged: list[Sequence] = []  # the sequences of the step's pre-merged adapter
        for seq in seqs:
            if seq.merged:
                self.merged.append(seq)
            elif seq.adapter is not None and seq.adapter not in pinned:
                self.groups.setdefault(seq.adapter, []).append(seq)
        self.held: Counter[str] = Counter()
        tenants_of = {a: {seq.tenant for seq in group} for a, group in self.groups.items()}
        for tenants in tenants_of.values():
            self.held.update(tenants)
        # (tenant's holding, tenants, sequences) of each adapter whose sequences may all be
        # preempted, in the order they are given up: the tenant holding the most first, then
        # its cheapest adapter (fewest sequences), then the latest arrival.
        ranked = [
            ((max(self.held[t] for t in tenants_of[a]), -len(group), max_arrival(group)), a)
            for a, group in self.groups.items()
            if all(map(evictable, group))
        ]
        ranked.sort(reverse=True)
        self.ranked = [(key[0], tenants_of[a], self.groups[a]) for key, a in ranked]
        # The first whose oldest sequence has run starvation_steps steps: it had its turn.
        self.settled = next(
            (
                group
                for _, _, group in self.ranked
                if step - first_admitted(group) >= starvation_steps
            ),
            [],
        )
        self.merged_evictable = all(map(evictable, self.merged))

    def victims(self, asking: Sequence) -> list[Sequence]:
        """The sequences to preempt so that ``asking`` gets a slot: all those of one adapter,
        by the module docstring's balance rule or, after ``starvation_steps`` skips, the guard's;
        [] when none may be taken. O(1) but for adapters that other tenants share."""
        skips, bound = asking.adapter_skips, self.starvation_steps
        if asking.merged:  # one pre-merged adapter a step: only the guard takes its place
            return self.merged if skips >= bound and self.merged_evictable else []
        if skips >= 2 * bound:
            return self.ranked[0][2] if self.ranked else []
        if skips >= bound:
            return self.settled
        least = self.held[asking.tenant] + 2  # balance: one other tenant's, holding 2 more
        for most, tenants, group in self.ranked:
            if most < least:
                break
            if len(tenants) == 1 and asking.tenant not in tenants:
                return group
        return []


def max_arrival(seqs: Iterable[Sequence]) -> tuple[float, int]:
    return max(seq.arrival_key for seq in seqs)


def first_admitted(seqs: Iterable[Sequence]) -> int:
    return min(seq.admitted_step for seq in seqs)
