"""Fair shares of the KV cache and of adapter slots between tenants (host-side, no torch).

One tenant's load must never starve another's. The scheduler (``engine/sched/scheduler.py``) applies
these rules only where blocks or slots are short; with a single tenant the block rules reduce
to the plain ones (preempt the latest arrival, FCFS on memory).

KV blocks. In a step, the *active* tenants are those with a sequence running or waiting. Each
one's share is an equal part of the cache, ``num_blocks / active``; its usage is the blocks in
its running sequences' tables (a prefix block that k of them share counts k times); its excess
is ``usage - share`` (kept as ``usage * active - num_blocks``: integers, no rounding).

- Preempt the furthest over its share first. When a running sequence's chunk lacks blocks, the
  victim is the candidate whose tenant has the largest excess, its latest arrival first. The
  candidates are the sequences not yet scheduled in the step (as with one tenant), plus, if the
  asking tenant is under its share, those already scheduled of tenants over theirs.
- Under-share tenants are admitted ahead. A waiting request that does not fit stops admission
  behind it (FCFS on memory) only if its tenant is under its share; one of a tenant at or over
  its share is passed over, and from then on the step admits only tenants under their share.
  So a preempted sequence of an over-share tenant never blocks an under-share tenant.
- Reclaim. A waiting request that does not fit, of a tenant under its share that stays within
  it with the request's whole prompt (and output so far), preempts running sequences of other
  tenants over their share (furthest over first, latest arrival first) until it fits, in the
  same step.
- Progress. The oldest running sequence is never preempted for another's sake, so it always
  finishes: when sequences that cannot fit together contend, the oldest goes first (a single
  sequence holding most of the cache is the one thing a quiet tenant still waits for).
- A tenant that had a sequence preempted for blocks in a step is not admitted in that step,
  and after such a preemption only tenants under their share are: the blocks just freed must
  not go straight back (with one tenant: no admission after a preemption, as before).

Adapter slots. A tenant holds the distinct slot-taking adapters (not pre-merged, not pinned) of
its sequences in the step; an adapter two tenants run counts for both.

- Balance. A waiting request that needs a new slot when every one is taken takes one from the
  tenant holding the most, if that tenant holds at least two more than the asking one: all the
  running sequences of that tenant's adapter with the fewest of them (latest arrival on ties)
  are preempted. Holdings even out to ``max_loras / tenants`` each and never flip back.
- Guard. Once a request has been passed over for its slot more than ``starvation_steps``
  times, it takes one the same way from a tenant holding more than its own tenant (one more is
  enough). Otherwise its own tenant holds the most: no later request gets a slot but by taking
  one (balance, or its own guard), nor is any later request of its tenant on an adapter in the
  step admitted, so its tenant's running sequences drain and free a slot for it (the guard as
  it was with one tenant, but base-model, pinned and pre-merged requests, and other tenants'
  requests on adapters in the step, still get in). If its tenant has no adapter of its own to
  drain (it shares them all), it takes any slot. A request of another pre-merged adapter than
  the step's takes the step's the same way.
- A request that needs no new slot (the base model, a pinned or pre-merged adapter, an adapter
  already in the step) is never held behind a slot wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from loraplex.engine.request.sequence import Sequence


class BlockShares:
    """KV-block usage per tenant through one step, against each active tenant's equal share.
    Counted on first use (only when blocks are short), then kept up to date by ``charge``."""

    def __init__(
        self,
        running: list[Sequence],
        waiting_tenants: Callable[[], Iterable[str]],
        num_blocks: int,
    ) -> None:
        self.running = running  # the scheduler's list, as it changes through the step
        self.waiting_tenants = waiting_tenants
        self.num_blocks = num_blocks
        self._usage: Counter[str] | None = None
        self._admitted: list[Sequence] = []  # admitted in this step, not yet in ``running``
        self.active = 1

    @property
    def usage(self) -> Counter[str]:
        if self._usage is None:
            self._usage = Counter()
            for seq in (*self.running, *self._admitted):
                self._usage[seq.tenant] += len(seq.block_table)
            self.active = max(1, len(set(self._usage).union(self.waiting_tenants())))
        return self._usage

    def admit(self, seq: Sequence) -> None:
        """``seq`` was admitted with the blocks in its table."""
        self._admitted.append(seq)
        self.charge(seq.tenant, len(seq.block_table))

    @property
    def oldest(self) -> Sequence | None:
        """The oldest running sequence: never a victim for another's sake. O(running), only
        when blocks are short."""
        return min(self.running, key=lambda seq: seq.arrival_key, default=None)

    def charge(self, tenant: str, blocks: int) -> None:
        """``tenant``'s sequences took (``blocks`` > 0) or gave back (< 0) blocks."""
        if self._usage is not None:  # else counted from the block tables when first used
            self._usage[tenant] += blocks

    def excess(self, tenant: str, extra: int = 0) -> int:
        """``(usage + extra - share) * active``: positive when over its share."""
        usage = self.usage[tenant]  # first: counting sets ``active``
        return (usage + extra) * self.active - self.num_blocks

    def under(self, tenant: str) -> bool:
        return self.excess(tenant) < 0

    def over_for(self, asking: Sequence, seqs: Iterable[Sequence]) -> list[Sequence]:
        """Those of ``seqs`` whose tenant is over its share, if ``asking``'s is under its."""
        if not self.under(asking.tenant):
            return []
        return [seq for seq in seqs if self.excess(seq.tenant) > 0]

    def victim(self, asking: Sequence, candidates: Iterable[Sequence]) -> Sequence:
        """Whom to preempt so that ``asking``'s chunk fits: of ``asking`` and ``candidates``
        (the oldest running sequence excluded, unless it is ``asking``), the one whose tenant is
        furthest over its share, latest arrival first."""
        oldest = self.oldest
        pool = [seq for seq in candidates if seq is not oldest and seq is not asking]
        return max([*pool, asking], key=self._victim_key)

    def may_reclaim(self, tenant: str, blocks: int) -> bool:
        """Whether a waiting request of ``tenant`` needing ``blocks`` may preempt others: its
        tenant is under its share and stays within it with them."""
        return self.under(tenant) and self.excess(tenant, blocks) <= 0

    def reclaim_victim(self, asking: Sequence) -> Sequence | None:
        """A running sequence of another tenant over its share to preempt for the waiting
        ``asking`` (the furthest over first, its latest arrival first), or None."""
        oldest = self.oldest
        pool = [
            seq
            for seq in self.running
            if seq.tenant != asking.tenant and seq is not oldest and self.excess(seq.tenant) > 0
        ]
        return max(pool, key=self._victim_key, default=None)

    def _victim_key(self, seq: Sequence) -> tuple[int, tuple[float, int]]:
        return (self.excess(seq.tenant), seq.arrival_key)


class SlotHolders:
    """Who holds the step's adapter slots: its sequences grouped by slot-taking adapter, and how
    many adapters each tenant holds. ``evictable``: whether a sequence may be preempted now (it
    ran before this step, rather than being admitted in it)."""

    def __init__(
        self,
        seqs: Iterable[Sequence],
        pinned: frozenset[str],
        evictable: Callable[[Sequence], bool],
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
        self.sole: set[str] = set()  # tenants alone on one of their adapters: they can drain it
        tenants_of = {a: {seq.tenant for seq in group} for a, group in self.groups.items()}
        for tenants in tenants_of.values():
            self.held.update(tenants)
            if len(tenants) == 1:
                self.sole.update(tenants)
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
        self.merged_evictable = all(map(evictable, self.merged))

    def victims(self, asking: Sequence) -> list[Sequence]:
        """The sequences to preempt so that ``asking`` gets a slot: all those of one adapter
        (the module docstring's balance rule, or past ``starvation_steps`` skips the guard's),
        or [] when none may be taken. O(1) but for adapters that other tenants share."""
        starving = asking.adapter_skips >= self.starvation_steps
        if asking.merged:  # one pre-merged adapter a step: only the guard takes its place
            return self.merged if starving and self.merged_evictable else []
        least = self.held[asking.tenant] + (1 if starving else 2)
        for most, tenants, group in self.ranked:
            if most < least:
                break
            if len(tenants) == 1 and asking.tenant not in tenants:
                return group
        if starving and asking.tenant not in self.sole and self.ranked:
            return self.ranked[0][2]  # nothing of its own tenant's to drain: take one anyway
        return []


def max_arrival(seqs: Iterable[Sequence]) -> tuple[float, int]:
    return max(seq.arrival_key for seq in seqs)
