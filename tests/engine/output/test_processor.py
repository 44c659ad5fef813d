"""The output processor: stops (EOS, stop ids, stop strings, length), deltas, and the latency
metrics it records for any driver of the engine, HTTP or not."""

from __future__ import annotations

import torch
from builders import word_tokenizer

from loraplex import metrics
from loraplex.engine.output.processor import OutputProcessor
from loraplex.engine.output.state import RequestState, make_request
from loraplex.engine.request.params import SamplingParams

EOS = 1  # word_tokenizer's "t1"


def _child(params: SamplingParams, prompt: list[int] = [5, 6]) -> RequestState:  # noqa: B006
    parent = make_request(
        "q", [prompt], params, None, False, tokenizer=word_tokenizer(), device=torch.device("cpu")
    )
    return parent.children[0]


def _processor() -> OutputProcessor:
    return OutputProcessor(frozenset({EOS}), 16)


def test_eos_stop_ids_stop_strings_and_length() -> None:
    proc = _processor()
    eos = _child(SamplingParams(max_tokens=5))
    assert proc.advance(eos, 7).text.strip() == "t7"
    last = proc.advance(eos, EOS)
    assert last.finished and last.finish_reason == "stop" and last.token_ids == (EOS,)
    stop_id = _child(SamplingParams(max_tokens=5, stop_token_ids=(9,)))
    assert proc.advance(stop_id, 9).finish_reason == "stop"
    stop_str = _child(SamplingParams(max_tokens=5, stop=("t8",)))
    assert proc.advance(stop_str, 7).text.strip() == "t7"
    out = proc.advance(stop_str, 8)
    assert out.finish_reason == "stop" and "t8" not in out.text
    length = _child(SamplingParams(max_tokens=2, ignore_eos=True))
    proc.advance(length, EOS)
    out = proc.advance(length, EOS)
    assert out.finish_reason == "length" and out.num_output_tokens == 2
    states = [eos, stop_id, stop_str, length]
    assert [s.finish_reason for s in states] == ["stop", "stop", "stop", "length"]
    assert not any(s.finished for s in states)  # the engine finishes them, not the processor


def test_process_returns_the_states_that_stopped_and_calls_nothing() -> None:
    """The step runs one way: the processor hands back who stopped; it never calls up."""
    proc = _processor()
    going, ending = _child(SamplingParams(max_tokens=5)), _child(SamplingParams(max_tokens=5))
    logits = torch.zeros(2, 8)
    outputs, finished = proc.process([going, ending], [7, EOS], [None, None], logits, [])
    assert [o.finished for o in outputs] == [False, True]
    assert finished == [ending] and ending.finish_reason == "stop"
    assert going.finish_reason is None


def test_metrics_are_recorded_by_the_engine_side() -> None:
    def count(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0

    before = (
        count("loraplex_time_to_first_token_seconds_count"),
        count("loraplex_generation_tokens_total"),
    )
    proc = _processor()
    child = _child(SamplingParams(max_tokens=3, ignore_eos=True))
    for token in (7, 8, 9):
        proc.advance(child, token)
    assert count("loraplex_time_to_first_token_seconds_count") == before[0] + 1
    assert count("loraplex_generation_tokens_total") == before[1] + 3
    assert child.first_token_time is not None
