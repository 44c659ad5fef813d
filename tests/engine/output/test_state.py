"""A request's state: P prompts x n samples become children i * n + j, seeded seed + j."""

from __future__ import annotations

import pytest
import torch
from builders import word_tokenizer

from loraplex.engine.output.state import make_request, sample_params
from loraplex.engine.request.params import SamplingParams


def test_children_are_prompt_major_with_seed_plus_j() -> None:
    params = SamplingParams(seed=10, temperature=1.0)
    parent = make_request(
        "r", [[1, 2], [3]], params, "a@x", False,
        tokenizer=word_tokenizer(), device=torch.device("cpu"), n=3, cache_salt="t",
    )  # fmt: skip
    assert [c.index for c in parent.children] == list(range(6))
    assert [c.seq.prompt_token_ids for c in parent.children] == [[1, 2]] * 3 + [[3]] * 3
    assert [c.params.seed for c in parent.children] == [10, 11, 12] * 2
    assert {c.seq.request_id for c in parent.children} == {f"r-{i}" for i in range(6)}
    assert {c.seq.arrival_time for c in parent.children} == {parent.arrival_time}
    assert all(c.seq.adapter == "a@x" and c.seq.cache_salt == "t" for c in parent.children)
    assert not any(c.holds_adapter for c in parent.children)  # nothing held before submit
    draws = [c.generator.initial_seed() for c in parent.children]
    assert draws == [10, 11, 12] * 2
    assert not parent.finished
    for child in parent.children:
        child.finished = True
    assert parent.finished


def test_unseeded_and_first_sample_keep_the_params() -> None:
    params = SamplingParams()
    assert sample_params(params, 0) is params and sample_params(params, 5) is params
    seeded = SamplingParams(seed=1)
    assert sample_params(seeded, 0) is seeded and sample_params(seeded, 2).seed == 3


def test_a_seed_torch_refuses_fails_before_anything_exists() -> None:
    with pytest.raises(ValueError):
        make_request(
            "r", [[1]], SamplingParams(seed=2**64), None, False,
            tokenizer=word_tokenizer(), device=torch.device("cpu"),
        )  # fmt: skip
