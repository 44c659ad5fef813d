"""Graph-safe decode inputs: persistent device buffers filled by one host->device copy a step.

Every tensor a pure-decode forward reads lives at a fixed address, sized once from the config's
upper bounds (``M`` = max_num_seqs rows, ``W`` = max blocks per sequence, ``S`` = adapter
slots), so a CUDA graph captured over them serves every later step. One flat int32 buffer holds
them all, as views; its host twin (pinned on CUDA) is filled by Python and copied in one
non-blocking copy:

    fields  [5, M]       per batch row: token id, position, cache row of the new key
                         (``slot_mapping``), keys visible (``seq_len``), row in ``tables``
    ends    [S]          cumulative rows of each adapter slot (``LoRAMeta.group_ends``)
    tables  [M + 1, W]   block tables by *table row*; row 0 is the scratch row

A sequence keeps its table row from step to step, so only the blocks appended since the last
step are written (incremental: a new row when it arrives, one entry per ``block_size`` tokens
after that); the forward gathers the step's rows into batch order on the device
(``index_select``, inside the graph). Rows past the real ones, up to the padded batch size,
point at a scratch KV block (one the block manager never hands out), see one key, and use no
adapter: their outputs are ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from loraplex.engine.attention.block_tables import SequenceTables
from loraplex.engine.attention.metadata import AttentionMetadata
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sched.scheduler import ScheduledSeq
from loraplex.lora.ops import LoRAMeta

# Padded batch sizes (vLLM's capture sizes): 1, 2, 4, 8, then every multiple of 8.
SMALL_SIZES = (1, 2, 4, 8)
SIZE_STEP = 8
FIELDS = 5  # token id, position, slot mapping, seq_len, table row


def padded_sizes(max_num_seqs: int) -> list[int]:
    """Ascending batch sizes a decode step is padded to, the last one ``max_num_seqs``."""
    sizes = [s for s in SMALL_SIZES if s < max_num_seqs]
    sizes += range(2 * SIZE_STEP, max_num_seqs, SIZE_STEP)
    return [*sizes, max_num_seqs]


def is_pure_decode(scheduled: list[ScheduledSeq]) -> bool:
    """True when every scheduled sequence feeds one token and samples (no prompt logprobs,
    no pre-merged adapter): the steps the persistent buffers serve."""
    return bool(scheduled) and all(
        item.num_new_tokens == 1
        and item.sample
        and not item.seq.wants_prompt_logprobs
        and not item.seq.merged
        for item in scheduled
    )


@dataclass(frozen=True)
class DecodeStep:
    """What :meth:`DecodeInputs.fill` wrote: ``seqs`` in batch-row order (rows ``0..n-1``),
    padded to ``size`` rows; ``lora_rows`` of them use an adapter; ``max_seq_len`` is the
    longest context of the real rows (host side)."""

    seqs: list[Sequence]
    size: int
    lora_rows: int
    max_seq_len: int


@dataclass
class _TableRow:
    row: int
    table: list[int]  # the sequence's block_table list object (only ever appended to)
    written: int  # entries of ``table`` already in the host buffer


class DecodeInputs:
    """The persistent buffers of pure-decode steps and the bookkeeping that fills them."""

    def __init__(
        self,
        max_num_seqs: int,
        max_blocks_per_seq: int,
        num_slots: int,
        block_size: int,
        scratch_block: int,
        device: torch.device,
    ) -> None:
        m, w, s = max_num_seqs, max_blocks_per_seq, num_slots
        self.max_num_seqs, self.width, self.num_slots = m, w, s
        self.block_size, self.device = block_size, device
        self._scratch_slot = scratch_block * block_size
        self._tables_at = FIELDS * m + s
        total = self._tables_at + (m + 1) * w
        self._host = torch.zeros(total, dtype=torch.int32, pin_memory=device.type == "cuda")
        self._flat = torch.zeros(total, dtype=torch.int32, device=device)
        self._host_fields = self._host[: FIELDS * m].view(FIELDS, m)
        self._host_ends = self._host[FIELDS * m : self._tables_at]
        self._host_tables = self._host[self._tables_at :].view(m + 1, w)
        self._host_tables[0] = scratch_block
        fields = self._flat[: FIELDS * m].view(FIELDS, m)
        self.token_ids, self.positions, self.slot_mapping, self.seq_lens, self.table_rows = fields
        self.group_ends = self._flat[FIELDS * m : self._tables_at]
        self.tables = self._flat[self._tables_at :].view(m + 1, w)
        # What the forward derives from them (int64 where torch indexes, batch-ordered tables).
        self.token_ids_64 = torch.zeros(1, m, dtype=torch.int64, device=device)
        self.positions_64 = torch.zeros(1, m, dtype=torch.int64, device=device)
        self.slot_mapping_64 = torch.zeros(m, dtype=torch.int64, device=device)
        self.step_tables = torch.zeros(m, w, dtype=torch.int32, device=device)
        self.query_starts = torch.arange(m + 1, dtype=torch.int32, device=device)
        self.batch_rows = torch.arange(m, dtype=torch.int64, device=device)
        self._block_offsets = torch.arange(block_size, dtype=torch.int64, device=device)
        self._rows: OrderedDict[int, _TableRow] = OrderedDict()  # seq_id -> its table row
        self._free = list(range(m, 0, -1))
        self._copied = torch.cuda.Event() if device.type == "cuda" else None
        self.fill_padding(m)
        self._copy(1)

    # ---- host side: once per step -------------------------------------------------------

    def fill(
        self, scheduled: list[ScheduledSeq], slot_of: dict[str, int], pad_to: int | None = None
    ) -> DecodeStep:
        """Write one pure-decode step and copy it to the device (one non-blocking copy).

        Rows are ordered as ``build_batch`` orders them (adapter rows by ascending slot, then
        base rows), padded to ``pad_to`` rows (None: no padding).
        """
        n = len(scheduled)
        size = n if pad_to is None else pad_to
        if not 0 < n <= size <= self.max_num_seqs:
            raise ValueError(f"{n} decode rows padded to {size} (at most {self.max_num_seqs})")

        def rank(item: ScheduledSeq) -> int:
            adapter = item.seq.adapter
            return slot_of[adapter] if adapter else self.num_slots

        order = sorted(scheduled, key=rank)
        self._wait_for_copy()
        present = {item.seq.seq_id for item in order}
        bs, counts, seqs = self.block_size, [0] * self.num_slots, []
        ids, positions, slots, lens, rows = [], [], [], [], []
        last_row = 0
        for item in order:
            seq, position = item.seq, item.start
            ids.append(seq.token_ids[position])
            positions.append(position)
            slots.append(seq.block_table[position // bs] * bs + position % bs)
            lens.append(position + 1)
            row = self._table_row(seq, present)
            rows.append(row)
            last_row = max(last_row, row)
            if seq.adapter:
                counts[slot_of[seq.adapter]] += 1
            seqs.append(seq)
        self._host_fields[:, :n] = torch.tensor([ids, positions, slots, lens, rows])
        self.fill_padding(size, n)
        ends, total = [], 0
        for count in counts:
            total += count
            ends.append(total)
        self._host_ends.copy_(torch.tensor(ends, dtype=torch.int32))
        self._copy(last_row + 1)
        return DecodeStep(seqs, size, total, max(lens))

    def fill_padding(self, size: int, start: int = 0) -> None:
        """Rows ``start..size-1`` as padding: token 0 at position 0, its key written to the
        scratch block, one key seen, table row 0 (scratch); no adapter row when ``start`` is 0.
        (Capture warm-ups fill a whole batch this way, then copy it with :meth:`copy_all`.)"""
        self._wait_for_copy()
        pad = self._host_fields[:, start:size]
        pad[0], pad[1], pad[2], pad[3], pad[4] = 0, 0, self._scratch_slot, 1, 0
        if start == 0:
            self._host_ends.zero_()

    def copy_all(self) -> None:
        """Copy the whole host buffer (after :meth:`fill_padding` for a warm-up)."""
        self._copy(self.max_num_seqs + 1)

    def _wait_for_copy(self) -> None:
        """Before the host buffer is written: the last non-blocking copy has read it."""
        if self._copied is not None:
            self._copied.synchronize()

    def _copy(self, table_rows: int) -> None:
        """One copy of the fields, the slot ends and table rows ``0..table_rows-1``."""
        end = self._tables_at + table_rows * self.width
        self._flat[:end].copy_(self._host[:end], non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def _table_row(self, seq: Sequence, present: set[int]) -> int:
        """``seq``'s table row, with every block appended since the last step written."""
        entry = self._rows.get(seq.seq_id)
        if entry is None:
            entry = _TableRow(self._take_row(present), seq.block_table, 0)
            self._rows[seq.seq_id] = entry
        self._rows.move_to_end(seq.seq_id)
        table = seq.block_table
        if entry.table is not table:  # freed and allocated again (preemption): rewrite
            entry.table, entry.written = table, 0
        if len(table) > self.width:
            raise RuntimeError(f"a block table of {len(table)} blocks (at most {self.width})")
        if len(table) > entry.written:
            new = torch.tensor(table[entry.written :], dtype=torch.int32)
            self._host_tables[entry.row, entry.written : len(table)] = new
            entry.written = len(table)
        return entry.row

    def _take_row(self, present: set[int]) -> int:
        """A free table row, else the least recently used one of a sequence not in the step."""
        if self._free:
            return self._free.pop()
        victim = next(seq_id for seq_id in self._rows if seq_id not in present)
        return self._rows.pop(victim).row

    # ---- device side: what the forward reads (no host data, so it can be captured) --------

    def step_tensors(
        self, size: int, max_seq_len: int, lora_rows: int | None, gather_keys: bool
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, LoRAMeta | None]:
        """(input_ids [1, size], position_ids [1, size], attention metadata, LoRA metadata)
        over the buffers, for a step of ``size`` rows.

        ``max_seq_len`` bounds every row's keys (host side: a captured graph passes
        max_model_len so one launch configuration serves every step). ``lora_rows``: the
        adapter rows (None: an upper bound, ``size``, for a captured graph, whose kernels read
        ``group_ends`` only; 0: no LoRA metadata). ``gather_keys``: also build the SDPA
        reference's padded cache rows ``[size, L]`` (L = ``max_seq_len`` rounded up to a
        block), for the torch attention backend.
        """
        ids, positions = self.token_ids_64[:, :size], self.positions_64[:, :size]
        ids[0].copy_(self.token_ids[:size])
        positions[0].copy_(self.positions[:size])
        slot_mapping = self.slot_mapping_64[:size]
        slot_mapping.copy_(self.slot_mapping[:size])
        tables, seq_lens = self.step_tables[:size], self.seq_lens[:size]
        torch.index_select(self.tables, 0, self.table_rows[:size], out=tables)
        sequences = SequenceTables(
            self.query_starts[: size + 1], seq_lens, tables, self.block_size, 1, max_seq_len
        )
        meta = AttentionMetadata(slot_mapping, None, None, None, [], sequences)
        if gather_keys:
            blocks = -(-max_seq_len // self.block_size)
            rows = tables[:, :blocks].long() * self.block_size
            meta.decode_cache_rows = (rows[:, :, None] + self._block_offsets).view(size, -1)
            keys = torch.arange(blocks * self.block_size, device=self.device)
            meta.decode_mask = (keys[None, :] < seq_lens[:, None])[:, None, None, :]
            meta.decode_rows = self.batch_rows[:size]
        rows = size if lora_rows is None else lora_rows
        lora = LoRAMeta(rows, self.group_ends, None, None, 0) if rows else None
        return ids, positions, meta, lora
