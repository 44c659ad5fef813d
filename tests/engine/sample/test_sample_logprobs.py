"""Logprobs: the raw model distribution at the chosen token and its top k, brought back with
the sampled tokens in one copy."""

from __future__ import annotations

import pytest
import torch

from loraplex.engine.sample.logprobs import read_sampled, token_logprobs

V = 8


def test_token_logprobs_are_the_raw_log_softmax_with_the_top_k() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 3.0, 1.0]])
    rows = token_logprobs(logits, [2, 1], [2, 0])
    expected = logits.log_softmax(-1)
    assert rows[0].token_id == 2
    assert rows[0].logprob == pytest.approx(float(expected[0, 2]))
    assert [t for t, _ in rows[0].top] == [0, 1]
    assert [lp for _, lp in rows[0].top] == pytest.approx(expected[0, :2].tolist())
    assert rows[1].top == ()  # k = 0: only the sampled token's own logprob
    assert rows[1].logprob == pytest.approx(float(expected[1, 1]))


def test_read_sampled_brings_tokens_and_the_asked_logprobs_back_together() -> None:
    torch.manual_seed(3)
    logits = torch.randn(4, V)
    tokens = torch.tensor([5, 0, 7, 2])
    ids, entries = read_sampled(tokens, logits, [None, 3, 0, None])
    assert ids == [5, 0, 7, 2] and entries[0] is None and entries[3] is None
    assert entries[1:3] == token_logprobs(logits[1:3], [0, 7], [3, 0])
    assert len(entries[1].top) == 3 and entries[2].top == ()
    assert read_sampled(tokens, logits, [None] * 4) == ([5, 0, 7, 2], [None] * 4)
