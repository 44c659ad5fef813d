"""Paged KV-cache block allocator with automatic prefix caching (host-side bookkeeping, no torch).

The KV cache is ``num_blocks`` fixed-size blocks of ``block_size`` token slots each. A sequence
owns the blocks listed in ``seq.block_table``, in token order: token ``i`` of the sequence lives
in block ``block_table[i // block_size]`` at offset ``i % block_size``.

Prefix caching: once all ``block_size`` tokens of a sequence's block ``i`` are in the cache, the
block is published under ``h_i = sha256(h_{i-1} ‖ tokens of block i)``, with ``h_{-1}`` derived
from the adapter key and the request's optional cache salt. A token's KV depends on every token
before it and on the adapter weights that computed it, so equal hashes mean equal KV: a later
sequence whose leading full blocks hash the same shares those blocks (ref-counted) and skips
their prefill. sha256, not Python's ``hash``: a crafted prompt must never collide with another
tenant's cached prefix.

Sliding window (vLLM's sliding-window manager): when every attention layer of the model sees
only the last ``sliding_window`` keys, a block whose tokens all lie before the window of the
sequence's next token is never read again; :meth:`free_out_of_window` returns it to the pool
(its published prefix stays findable, like any freed block) and puts :attr:`null_block` in its
place in the table, so positions keep their index. The null block is the runner's all-zero
block past the pool: attention never reads a key outside the window anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

from loraplex.engine.request.sequence import Sequence


class BlockManager:
    """Hands out block ids ``0 .. num_blocks - 1``; blocks are ref-counted by owning sequences.

    Invariants: a block is owned (``ref > 0``, listed in the tables of ``ref`` sequences) or
    free (``ref == 0``, in the free pool), never both; ``num_free_blocks + owned == num_blocks``.
    A free block may still hold a published prefix: it stays findable until the pool hands it
    out again, least recently freed first, so the coldest cached prefixes are evicted first.
    Only full, computed blocks are shared, and a sequence only writes past its computed
    tokens, so a shared block is never written.
    """

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = False,
        sliding_window: int | None = None,
    ):
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("num_blocks and block_size must be positive")
        if sliding_window is not None and sliding_window <= 0:
            raise ValueError("sliding_window must be positive")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.sliding_window = sliding_window
        self.null_block = num_blocks + 1  # past the pool and the scratch block: all zeros
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._refs = [0] * num_blocks
        self._hash_of: dict[int, bytes] = {}  # published block -> its prefix hash
        self._block_of: dict[bytes, int] = {}  # prefix hash -> the block holding it

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks owned by a sequence, in [0, 1] (cached free blocks don't count)."""
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
            block, _ = self._free.popitem(last=False)
            stale = self._hash_of.pop(block, None)  # evict the prefix it cached
            if stale is not None:
                del self._block_of[stale]
            self._refs[block] = 1
            seq.block_table.append(block)

    def free(self, seq: Sequence) -> None:
        """Drop ``seq``'s hold on its blocks and clear its block table.

        Raises ``RuntimeError`` (freeing nothing) if a block is unowned or repeated, which
        means a double free: a bookkeeping bug worth failing loudly on.
        """
        table = [b for b in seq.block_table if b != self.null_block]  # out of the window: freed
        # Validate everything first so a bad table leaves the allocator untouched.
        bad = [b for b in table if not 0 <= b < self.num_blocks or self._refs[b] <= 0]
        if bad or len(set(table)) != len(table):
            raise RuntimeError(f"double free of KV blocks {table} (seq {seq.request_id})")
        # Tail first: a prompt's later blocks are less likely to be shared than its head, so
        # they should be evicted first.
        for block in reversed(table):
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
        seq.block_table = []

    def is_free(self, block: int) -> bool:
        return 0 <= block < self.num_blocks and self._refs[block] == 0

    def free_out_of_window(self, seq: Sequence) -> int:
        """Free ``seq``'s blocks that no later query can see: those whose tokens all lie before
        ``p - sliding_window + 1``, p = its next token's position. Returns how many."""
        if self.sliding_window is None:
            return 0
        first_seen = seq.num_computed_tokens - self.sliding_window + 1
        table, freed = seq.block_table, 0
        for index in range(min(max(first_seen, 0) // self.block_size, len(table))):
            block = table[index]
            if block == self.null_block:
                continue
            self._refs[block] -= 1
            if self._refs[block] == 0:
                self._free[block] = None
            table[index] = self.null_block
            freed += 1
        return freed

    # ---- prefix caching ------------------------------------------------------------------

    def unpublish(self, blocks: list[int]) -> None:
        """Withdraw ``blocks`` from the prefix cache (their KV must never be shared again,
        e.g. a sequence whose output went non-finite)."""
        for block in blocks:
            digest = self._hash_of.pop(block, None)
            if digest is not None:
                del self._block_of[digest]

    def cached_prefix(self, seq: Sequence) -> list[int]:
        """The published blocks holding ``seq``'s leading full blocks (a query; takes nothing).

        At most ``(num_tokens - 1) // block_size`` blocks, so at least one token is left to
        compute: the step that computes it also yields the logits to sample from. None for a
        sequence that wants prompt logprobs: they need the logits of every prompt token.
        """
        if not self.enable_prefix_caching or seq.block_table or seq.wants_prompt_logprobs:
            return []
        blocks = []
        for digest in self._hashes(seq, (seq.num_tokens - 1) // self.block_size):
            block = self._block_of.get(digest)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def can_admit(self, seq: Sequence, cached: list[int], num_new_tokens: int) -> bool:
        """Whether ``seq`` fits with ``cached`` shared and ``num_new_tokens`` more tokens."""
        total_blocks = -(-(len(cached) * self.block_size + num_new_tokens) // self.block_size)
        revived = sum(1 for b in cached if self._refs[b] == 0)  # leave the free pool
        return total_blocks - len(cached) <= len(self._free) - revived

    def admit(self, seq: Sequence, cached: list[int], num_new_tokens: int) -> None:
        """Share ``cached`` (from :meth:`cached_prefix`) with the new ``seq``, mark those tokens
        computed, then allocate for ``num_new_tokens`` more."""
        if seq.block_table or seq.num_computed_tokens:
            raise RuntimeError(f"seq {seq.request_id} is not new to the KV cache")
        for block in cached:
            if self._refs[block] == 0:
                del self._free[block]
            self._refs[block] += 1
            seq.block_table.append(block)
        seq.num_computed_tokens = seq.num_cached_tokens = len(cached) * self.block_size
        self.allocate(seq, num_new_tokens)

    def publish(self, seq: Sequence, start: int, num_tokens: int) -> None:
        """Publish the blocks that tokens ``[start, start + num_tokens)`` of ``seq`` (now
        computed) completed. A block whose content is published already stays private."""
        if not self.enable_prefix_caching:
            return
        first, end = start // self.block_size, (start + num_tokens) // self.block_size
        if first == end:  # most decode steps complete no block
            return
        for index, digest in enumerate(self._hashes(seq, end)[first:end], first):
            block = seq.block_table[index]
            if digest not in self._block_of and block not in self._hash_of:
                self._block_of[digest] = block
                self._hash_of[block] = digest

    def _hashes(self, seq: Sequence, count: int) -> list[bytes]:
        """The prefix hashes of ``seq``'s first ``count`` full blocks, memoized on ``seq``."""
        hashes = seq.block_hashes
        size = self.block_size
        while len(hashes) < count:
            i = len(hashes)
            parent = hashes[-1] if hashes else _adapter_seed(seq)
            tokens = seq.token_ids[i * size : (i + 1) * size]
            payload = b"".join(t.to_bytes(4, "little") for t in tokens)
            hashes.append(hashlib.sha256(parent + payload).digest())
        return hashes[:count]


def _adapter_seed(seq: Sequence) -> bytes:
    """The chain's root: the weights that compute the KV (adapter key, merged or gathered),
    and the request's cache salt, so tenants that salt differently never share (nor can time
    each other's prompts through) cached blocks."""
    label = json.dumps([seq.merged, seq.adapter, seq.cache_salt])
    return hashlib.sha256(label.encode()).digest()
