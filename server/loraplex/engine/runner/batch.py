"""One step's packed batch: every scheduled chunk concatenated into a single row of tokens."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from loraplex.engine.attention.block_tables import build_sequence_tables
from loraplex.engine.attention.metadata import AttentionMetadata, PrefillChunk
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sched.scheduler import ScheduledSeq
from loraplex.lora.ops import LoRAMeta, build_lora_meta


@dataclass
class PackedBatch:
    """Model inputs for one forward.

    input_ids, position_ids: [1, T]. sample_rows: [N] packed row of the last token of every
    sequence that samples this step, in the order of ``sample_seqs``. ``merged``: the step's
    pre-merged adapter key and its row count (its rows come last).
    prompt_rows: [M] packed rows whose logits score the next prompt token, for sequences that
    want prompt logprobs; ``prompt_targets[m]`` = (sequence, the prompt token row m predicts).
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention: AttentionMetadata
    lora: LoRAMeta | None
    merged: tuple[str, int] | None
    sample_rows: torch.Tensor
    sample_seqs: list[Sequence]
    prompt_rows: torch.Tensor | None = None
    prompt_targets: list[tuple[Sequence, int]] = field(default_factory=list)


def cache_rows(block_table: list[int], block_size: int, start: int, end: int) -> torch.Tensor:
    """Cache rows of token positions ``start..end-1``: ``block[p // bs] * bs + p % bs``."""
    pos = torch.arange(start, end)
    blocks = torch.tensor(block_table, dtype=torch.int64)
    return blocks[pos // block_size] * block_size + pos % block_size


def build_batch(
    scheduled: list[ScheduledSeq],
    slot_of: dict[str, int],
    block_size: int,
    num_slots: int,
    device: torch.device,
) -> PackedBatch:
    """Pack the step's chunks: slot rows by ascending slot (for the LoRA op), base rows, then
    the rows of the pre-merged adapter."""

    def rank(item: ScheduledSeq) -> int:
        seq = item.seq
        if seq.merged:
            return num_slots + 1
        return slot_of[seq.adapter] if seq.adapter else num_slots

    order = sorted(scheduled, key=rank)
    merged = [s for s in order if s.seq.merged]
    ids: list[int] = []
    positions: list[torch.Tensor] = []
    slot_mapping: list[torch.Tensor] = []
    row_slots: list[int] = []
    decode_rows: list[int] = []
    decode_ctx: list[torch.Tensor] = []
    prefills: list[PrefillChunk] = []
    sample_rows: list[int] = []
    sample_seqs: list[Sequence] = []
    prompt_rows: list[int] = []
    prompt_targets: list[tuple[Sequence, int]] = []
    chunks: list[tuple[int, int, list[int]]] = []  # (rows, context length, block table)
    for item in order:
        seq, n = item.seq, item.num_new_tokens
        start, end, row = seq.num_computed_tokens, seq.num_computed_tokens + n, len(ids)
        ids.extend(seq.token_ids[start:end])
        positions.append(torch.arange(start, end))
        context = cache_rows(seq.block_table, block_size, 0, end)
        slot_mapping.append(context[start:])
        chunks.append((n, end, seq.block_table))
        row_slots.extend([-1 if seq.merged or not seq.adapter else slot_of[seq.adapter]] * n)
        if n == 1:
            decode_rows.append(row)
            decode_ctx.append(context)
        else:
            rows = context.to(device) if start else None
            prefills.append(PrefillChunk(row, row + n, end, rows))
        if item.sample:
            sample_rows.append(row + n - 1)
            sample_seqs.append(seq)
        if seq.wants_prompt_logprobs:
            # Position p's logits score prompt token p + 1; skip what was scored before a
            # preemption (``prompt_logprobs`` has an entry per scored token, plus the first).
            first = max(start, len(seq.prompt_logprobs) - 1)
            for p in range(first, min(end, seq.num_prompt_tokens - 1)):
                prompt_rows.append(row + p - start)
                prompt_targets.append((seq, seq.prompt_token_ids[p + 1]))
    attention = AttentionMetadata(
        slot_mapping=torch.cat(slot_mapping).to(device),
        decode_rows=None,
        decode_cache_rows=None,
        decode_mask=None,
        prefills=prefills,
        sequences=build_sequence_tables(chunks, block_size, device),
    )
    if decode_rows:
        lengths = torch.tensor([len(c) for c in decode_ctx])
        padded = torch.nn.utils.rnn.pad_sequence(decode_ctx, batch_first=True)  # [D, L]
        mask = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
        attention.decode_rows = torch.tensor(decode_rows, device=device)
        attention.decode_cache_rows = padded.to(device)
        attention.decode_mask = mask[:, None, None, :].to(device)
    return PackedBatch(
        input_ids=torch.tensor([ids], device=device),
        position_ids=torch.cat(positions)[None, :].to(device),
        attention=attention,
        lora=build_lora_meta(row_slots, num_slots, device),
        merged=(merged[0].seq.adapter, sum(s.num_new_tokens for s in merged)) if merged else None,
        sample_rows=torch.tensor(sample_rows, dtype=torch.int64, device=device),
        sample_seqs=sample_seqs,
        prompt_rows=torch.tensor(prompt_rows, dtype=torch.int64, device=device)
        if prompt_rows
        else None,
        prompt_targets=prompt_targets,
    )
