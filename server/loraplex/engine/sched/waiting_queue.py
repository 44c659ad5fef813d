"""The scheduler's waiting queue: FIFO within a tenant, round-robin across tenants, with O(1)
removal from anywhere in it.

A client that hangs up, or a request of 64k sequences being aborted, removes sequences from
the middle of the queue; a deque would scan for each (O(N²) for N aborts). Insertion-ordered
dicts keyed by ``seq_id`` keep the order and remove in O(1).

Order of iteration (what the scheduler admits first): preempted sequences (``appendleft``: the
latest preempted first), then the tenants' queues interleaved, one sequence of each in turn,
tenants ordered by the arrival of the sequence at their head. With one tenant that is plain
FCFS; a tenant that queues a thousand requests delays another tenant's next request by one
place per round, not by a thousand. ``ordered(within_tenant)`` keeps those turns and only
chooses which of a tenant's own sequences fills each of its turns (adapter affinity).
Host-side only, no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import chain, zip_longest

from loraplex.engine.request.sequence import Sequence


class WaitingQueue:
    """Sequences waiting to run: preempted ones first, then the tenants' FIFOs round-robin."""

    def __init__(self) -> None:
        self._front: OrderedDict[int, Sequence] = OrderedDict()  # preempted
        self._tenants: dict[str, OrderedDict[int, Sequence]] = {}
        self._home: dict[int, OrderedDict[int, Sequence]] = {}  # seq_id -> the dict holding it

    def __len__(self) -> int:
        return len(self._home)

    def __bool__(self) -> bool:
        return bool(self._home)

    def __iter__(self) -> Iterator[Sequence]:
        return iter(self.ordered())  # a snapshot: callers remove while iterating

    def __contains__(self, seq: Sequence) -> bool:
        return seq.seq_id in self._home

    def __getitem__(self, index: int) -> Sequence:
        """Only the front (0) is cheap; it is what tests and the scheduler look at."""
        if index == 0 and self._front:
            return next(iter(self._front.values()))
        return self.ordered()[index]

    def tenants(self) -> dict[str, int]:
        """Sequences waiting per tenant (preempted ones not counted)."""
        return {tenant: len(queue) for tenant, queue in self._tenants.items()}

    def active_tenants(self) -> set[str]:
        """The tenants with a sequence waiting, preempted ones included."""
        return {*self._tenants, *(seq.tenant for seq in self._front.values())}

    def append(self, seq: Sequence) -> None:
        queue = self._tenants.setdefault(seq.tenant, OrderedDict())
        queue[seq.seq_id] = seq
        self._home[seq.seq_id] = queue

    def appendleft(self, seq: Sequence) -> None:
        self._front[seq.seq_id] = seq
        self._front.move_to_end(seq.seq_id, last=False)
        self._home[seq.seq_id] = self._front

    def remove(self, seq: Sequence) -> None:
        if not self.discard(seq):
            raise KeyError(seq.seq_id)

    def discard(self, seq: Sequence) -> bool:
        """Remove ``seq`` if queued; whether it was."""
        queue = self._home.pop(seq.seq_id, None)
        if queue is None:
            return False
        del queue[seq.seq_id]
        if not queue and queue is not self._front:
            del self._tenants[seq.tenant]
        return True

    def ordered(self, within_tenant: Callable[[Sequence], int] | None = None) -> list[Sequence]:
        """The admission order as a new list. With ``within_tenant``, each tenant's FIFO is
        first stably sorted by that key (ties keep arrival order); the tenants' turns, and
        their order by the arrival of each FIFO's head, are unchanged, and the preempted ones
        stay first in their own order: the key reorders a tenant's requests among themselves,
        never one tenant's ahead of another's."""
        queues = [list(q.values()) for q in self._tenants.values()]
        if len(queues) > 1:
            queues.sort(key=lambda q: (q[0].arrival_time, q[0].seq_id))
        if within_tenant is not None:
            queues = [sorted(q, key=within_tenant) for q in queues]
        if len(queues) > 1:
            rounds = zip_longest(*queues)
            interleaved = [seq for seq in chain.from_iterable(rounds) if seq is not None]
        else:
            interleaved = queues[0] if queues else []
        return [*self._front.values(), *interleaved]
