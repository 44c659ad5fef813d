"""The persistent decode buffers (no model): what one fill puts on the device, incremental block
tables, table rows reused across sequences, padding rows, the refusals."""

from __future__ import annotations

import pytest
import torch

from loraplex.engine.request.params import SamplingParams
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.runner.decode_inputs import DecodeInputs, is_pure_decode, padded_sizes
from loraplex.engine.sched.scheduler import ScheduledSeq

BLOCK, WIDTH, SLOTS, SCRATCH = 4, 6, 3, 99


def decoding(prompt_len: int, adapter: str | None, blocks: list[int]) -> Sequence:
    """A sequence whose prompt is computed and whose next token is the last one."""
    seq = Sequence("r", list(range(10, 10 + prompt_len)), SamplingParams(), adapter=adapter)
    seq.append_token(7)
    seq.num_computed_tokens = prompt_len
    seq.block_table = blocks
    return seq


def step(seqs: list[Sequence]) -> list[ScheduledSeq]:
    return [ScheduledSeq(s, 1) for s in seqs]


def advance(seq: Sequence, token: int) -> None:
    seq.num_computed_tokens += 1
    seq.append_token(token)


def buffers(max_num_seqs: int = 8) -> DecodeInputs:
    return DecodeInputs(max_num_seqs, WIDTH, SLOTS, BLOCK, SCRATCH, torch.device("cpu"))


def test_padded_sizes_are_vllms_capture_sizes_up_to_max_num_seqs() -> None:
    assert padded_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert padded_sizes(10) == [1, 2, 4, 8, 10]
    assert padded_sizes(1) == [1]


def test_pure_decode_means_one_sampled_token_each_and_no_prompt_logprobs() -> None:
    seq = decoding(5, None, [0, 1])
    assert is_pure_decode(step([seq]))
    assert not is_pure_decode([])
    prefill = Sequence("p", [1, 2, 3], SamplingParams())
    assert not is_pure_decode([*step([seq]), ScheduledSeq(prefill, 3)])
    assert not is_pure_decode([ScheduledSeq(prefill, 1)])  # a chunk that does not sample
    scoring = decoding(5, None, [0, 1])
    scoring.params = SamplingParams(prompt_logprobs=1)
    assert not is_pure_decode(step([scoring]))
    merged = decoding(5, "a", [0, 1])
    merged.merged = True
    assert not is_pure_decode(step([merged]))


def test_one_fill_puts_the_step_on_the_device_in_slot_order_with_padding() -> None:
    inputs = buffers()
    seqs = [decoding(5, None, [3, 4]), decoding(2, "b", [8]), decoding(8, "a", [1, 2, 5])]
    filled = inputs.fill(step(seqs), {"a": 0, "b": 2}, pad_to=4)
    assert filled.seqs == [seqs[2], seqs[1], seqs[0]]  # slot 0, slot 2, then base
    assert (filled.size, filled.lora_rows, filled.max_seq_len) == (4, 2, 9)
    ids, positions, attention, lora = inputs.step_tensors(4, filled.max_seq_len, 2, True)
    assert ids.tolist() == [[7, 7, 7, 0]] and positions.tolist() == [[8, 2, 5, 0]]
    # Position p lives in block_table[p // 4] at offset p % 4; padding writes the scratch block.
    assert attention.slot_mapping.tolist() == [5 * 4 + 0, 8 * 4 + 2, 4 * 4 + 1, SCRATCH * 4]
    tables = attention.sequences
    assert tables.seq_lens.tolist() == [9, 3, 6, 1]
    assert tables.query_starts.tolist() == [0, 1, 2, 3, 4]
    assert tables.block_tables[:, :1].tolist() == [[1], [8], [3], [SCRATCH]]
    assert tables.block_tables[0, :3].tolist() == [1, 2, 5]
    assert tables.block_tables[3].tolist() == [SCRATCH] * WIDTH
    assert lora.num_lora_rows == 2 and lora.group_ends.tolist() == [1, 1, 2]
    # The SDPA reference's gathered cache rows: the longest row's 9 keys span three blocks
    # (L = 12); keys past a row's length are masked.
    assert attention.decode_cache_rows.shape == (4, 12)
    assert attention.decode_cache_rows[0].tolist() == [*range(4, 12), *range(20, 24)]
    assert attention.decode_mask[:, 0, 0].sum(-1).tolist() == [9, 3, 6, 1]
    assert inputs.step_tensors(4, 9, 0, False)[3] is None  # no adapter row: no LoRA metadata


def test_block_tables_are_written_incrementally_and_rewritten_when_reallocated() -> None:
    inputs = buffers()
    seq, other = decoding(3, None, [6]), decoding(2, None, [9])
    inputs.fill(step([seq, other]), {})
    row = inputs._rows[seq.seq_id].row
    inputs._host_tables[row, 0] = -7  # a stand-in: only blocks appended later are rewritten
    advance(seq, 8)
    seq.block_table.append(2)  # position 4 starts a second block
    filled = inputs.fill(step([seq, other]), {})
    tables = inputs.step_tensors(filled.size, filled.max_seq_len, 0, False)[2].sequences
    assert tables.block_tables[0, :2].tolist() == [-7, 2]
    seq.block_table = [0, 1]  # preempted and allocated again: a new list, written in full
    filled = inputs.fill(step([seq, other]), {})
    tables = inputs.step_tensors(filled.size, filled.max_seq_len, 0, False)[2].sequences
    assert tables.block_tables[0, :2].tolist() == [0, 1]


def test_a_sequence_that_left_gives_its_table_row_to_a_new_one() -> None:
    inputs = buffers(max_num_seqs=2)
    first, second, third = (
        decoding(5, None, [1, 2]),
        decoding(2, None, [3]),
        decoding(1, None, [4]),
    )
    inputs.fill(step([first, second]), {})
    freed = inputs._rows[first.seq_id].row
    filled = inputs.fill(step([second, third]), {})
    assert inputs._rows[third.seq_id].row == freed and first.seq_id not in inputs._rows
    tables = inputs.step_tensors(filled.size, filled.max_seq_len, 0, False)[2].sequences
    assert tables.block_tables[:, 0].tolist() == [3, 4]


def test_steps_that_do_not_fit_the_buffers_are_refused() -> None:
    inputs = buffers(max_num_seqs=2)
    seqs = [decoding(2, None, [i]) for i in range(3)]
    with pytest.raises(ValueError, match="at most 2"):
        inputs.fill(step(seqs), {})
    with pytest.raises(ValueError, match="padded to 1"):
        inputs.fill(step(seqs[:2]), {}, pad_to=1)
    too_long = decoding(2, None, list(range(WIDTH + 1)))
    with pytest.raises(RuntimeError, match="at most 6"):
        inputs.fill(step([too_long]), {})
