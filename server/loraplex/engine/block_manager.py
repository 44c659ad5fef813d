"""Paged KV-cache block allocator (host-side bookkeeping, no torch).

The KV cache is ``num_blocks`` fixed-size blocks of ``block_size`` token slots each. A sequence
owns the blocks listed in ``seq.block_table``, in token order: token ``i`` of the sequence lives
in block ``block_table[i // block_size]`` at offset ``i % block_size``.
"""

from __future__ import annotations

from collections import deque

from loraplex.engine.sequence import Sequence


class BlockManager:
    """Hands out block ids ``0 .. num_blocks - 1`` from a free list.

    Invariants: every block id is either in the free list or in exactly one sequence's
    ``block_table``, never both; ``num_free_blocks + blocks in use == num_blocks``.
    Allocation and free are O(1) per block. No prefix caching: blocks are never shared.
    """

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._free: deque[int] = deque(range(num_blocks))
        # Mirrors membership of ``_free`` so a double free is caught in O(1).
        self._is_free = [True] * num_blocks

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, in [0, 1]."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        """Extra blocks ``seq`` needs to hold ``num_computed_tokens + num_new_tokens`` tokens."""
        total_tokens = seq.num_computed_tokens + num_new_tokens
        total_blocks = -(-total_tokens // self.block_size)  # ceil division
        return max(0, total_blocks - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= len(self._free)

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Append enough blocks to ``seq.block_table`` for ``num_new_tokens`` more tokens.

        Raises ``RuntimeError`` (allocating nothing) if there are not enough free blocks; the
        caller is expected to check ``can_allocate`` first.
        """
        needed = self.blocks_needed(seq, num_new_tokens)
        if needed > len(self._free):
            raise RuntimeError(
                f"out of KV blocks: need {needed}, {len(self._free)} free (seq {seq.request_id})"
            )
        for _ in range(needed):
            block = self._free.popleft()
            self._is_free[block] = False
            seq.block_table.append(block)

    def free(self, seq: Sequence) -> None:
        """Return all of ``seq``'s blocks to the free list and clear its block table.

        Raises ``RuntimeError`` (freeing nothing) if any block is already free or repeated,
        which means two owners or a double free: a bookkeeping bug worth failing loudly on.
        """
        table = seq.block_table
        # Validate everything first so a bad table leaves the allocator untouched.
        bad = [b for b in table if not 0 <= b < self.num_blocks or self._is_free[b]]
        if bad or len(set(table)) != len(table):
            raise RuntimeError(f"double free of KV blocks {table} (seq {seq.request_id})")
        for block in table:
            self._is_free[block] = True
            self._free.append(block)
        seq.block_table = []
