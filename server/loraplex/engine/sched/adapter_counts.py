"""How many sequences of each adapter wait and run, kept as the scheduler moves them (no torch).

The gateway's ``vllm:lora_requests_info`` lists the adapters with a running sequence and those
with only queued ones; counting them on every scrape would walk a queue that may hold thousands
of sequences, so the scheduler keeps these counts up to date on each move instead (O(1) each),
and a scrape reads a copy of two small dicts (one entry per adapter in use).
"""

from __future__ import annotations

from collections import Counter

from loraplex.engine.request.sequence import Sequence, SequenceStatus


class AdapterCounts:
    """adapter key -> number of its sequences per status (WAITING, RUNNING); base-model
    sequences (``adapter is None``) are not counted."""

    def __init__(self) -> None:
        self._counts: dict[SequenceStatus, Counter[str]] = {
            SequenceStatus.WAITING: Counter(),
            SequenceStatus.RUNNING: Counter(),
        }

    def enter(self, seq: Sequence, status: SequenceStatus) -> None:
        if seq.adapter is not None:
            self._counts[status][seq.adapter] += 1

    def leave(self, seq: Sequence, status: SequenceStatus) -> None:
        if seq.adapter is None:
            return
        counts = self._counts[status]
        counts[seq.adapter] -= 1
        if counts[seq.adapter] <= 0:
            del counts[seq.adapter]  # keeps the dicts as small as the adapters in use

    def move(self, seq: Sequence, old: SequenceStatus, new: SequenceStatus) -> None:
        self.leave(seq, old)
        self.enter(seq, new)

    def snapshot(self) -> tuple[list[str], list[str]]:
        """(adapters with a running sequence, adapters with queued sequences and none running),
        each sorted. Safe from another thread: ``dict(...)`` copies in one step under the GIL."""
        running = dict(self._counts[SequenceStatus.RUNNING])
        waiting = dict(self._counts[SequenceStatus.WAITING])
        return sorted(running), sorted(k for k in waiting if k not in running)
