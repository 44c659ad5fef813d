"""Prompt logprobs (``SamplingParams.prompt_logprobs``) equal a full PEFT/HF forward's, whatever
chunked prefill, the prefix cache, preemption and the adapter mix do to the batch."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import make_engine
from peft import PeftModel
from transformers import AutoModelForCausalLM

from loraplex.engine.llm_engine import LLMEngine
from loraplex.engine.request.outputs import RequestOutput
from loraplex.engine.request.params import ParameterError, SamplingParams

PREFIX = list(range(60, 74))  # 3 full blocks of 4 and 2 more: prefix-cache material
TOP = 3


def reference(store, prompt: list[int], adapter: str | None) -> torch.Tensor:
    """log_softmax of the model's logits at every prompt position: [len(prompt), vocab]."""
    model_dir, adapters = store
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter:
        model = PeftModel.from_pretrained(model, adapters / adapter)
    with torch.no_grad():
        return model(torch.tensor([prompt])).logits[0].log_softmax(-1)


def first_outputs(engine: LLMEngine, requests, **params) -> dict[str, RequestOutput]:
    """Run ``requests`` [(prompt, adapter)] together; each request's first output."""
    for i, (prompt, adapter) in enumerate(requests):
        engine.add_request(str(i), prompt, SamplingParams(**params), adapter)
    first: dict[str, RequestOutput] = {}
    while engine.has_unfinished():
        for out in engine.step():
            first.setdefault(out.request_id, out)
    return first


def check(store, prompt: list[int], adapter: str | None, out: RequestOutput) -> None:
    logp = reference(store, prompt, adapter)
    entries = out.prompt_logprobs
    assert entries is not None and len(entries) == len(prompt) and entries[0] is None
    for i, entry in enumerate(entries[1:], start=1):
        assert entry.token_id == prompt[i]
        assert entry.logprob == pytest.approx(logp[i - 1, prompt[i]].item(), abs=1e-4)
        values, ids = logp[i - 1].topk(TOP)
        assert [t for t, _ in entry.top] == ids.tolist()
        assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-4)


@pytest.mark.parametrize("caching", [False, True], ids=["no-prefix-cache", "prefix-cache-warm"])
def test_prompt_logprobs_match_a_full_forward(store, caching: bool) -> None:
    engine = make_engine(store, enable_prefix_caching=caching)
    requests = [([*PREFIX, 7, 8], None), ([*PREFIX, 9], "all"), ([*PREFIX, 1, 2, 3], "attn")]
    params = {"max_tokens": 3, "temperature": 0, "ignore_eos": True}
    first_outputs(engine, requests, **params)  # warms the prefix cache when it is on
    # Chunked prefill (16 tokens a step) splits these 15-17 token prompts over two steps.
    outs = first_outputs(engine, requests, prompt_logprobs=TOP, **params)
    for i, (prompt, adapter) in enumerate(requests):
        assert outs[str(i)].num_cached_tokens == 0  # the cache is never used for them
        check(store, prompt, adapter, outs[str(i)])


def test_prompt_logprobs_survive_preemption_and_go_out_once(store) -> None:
    engine = make_engine(store, num_blocks=10)  # too few blocks: some requests recompute
    requests = [([*PREFIX, i], ("all", None, "attn")[i % 3]) for i in range(5)]
    for i, (prompt, adapter) in enumerate(requests):
        params = SamplingParams(max_tokens=8, ignore_eos=True, prompt_logprobs=TOP)
        engine.add_request(str(i), prompt, params, adapter)
    preempted = []
    schedule = engine.scheduler.schedule

    def watched_schedule():
        out = schedule()
        preempted.extend(out.preempted)
        return out

    engine.scheduler.schedule = watched_schedule
    seen: dict[str, list[RequestOutput]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            seen.setdefault(out.request_id, []).append(out)
    assert preempted  # recomputed prompts were not scored (or sent) twice
    for i, (prompt, adapter) in enumerate(requests):
        outs = seen[str(i)]
        assert outs[0].prompt_logprobs is not None
        assert all(o.prompt_logprobs is None for o in outs[1:])
        check(store, prompt, adapter, outs[0])


def test_prompt_logprobs_range_is_checked() -> None:
    with pytest.raises(ParameterError, match="prompt_logprobs") as info:
        SamplingParams(prompt_logprobs=21)
    assert info.value.param == "prompt_logprobs"
