"""The engine end to end on a tiny model: continuous batching, preemption, sampling, PEFT parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_helpers import make_engine, run
from peft import PeftModel
from transformers import AutoModelForCausalLM

from loraplex.adapters.errors import AdapterNotFoundError
from loraplex.engine.request.params import ParameterError, SamplingParams

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], list(range(20, 33)), [40, 41, 42], [50] * 9, [60, 61]]


def peft_greedy(store: tuple[Path, Path], prompt: list[int], adapter: str | None, n: int):
    model_dir, adapters = store
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter:
        model = PeftModel.from_pretrained(model, adapters / adapter)
    ids = torch.tensor([prompt])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def mixed_requests() -> list[tuple[list[int], str | None]]:
    adapters = ["attn", None, "all", "all", "attn", None]
    return list(zip(PROMPTS, adapters, strict=True))


def test_mixed_batch_greedy_equals_peft_generate(store) -> None:
    requests = mixed_requests()
    got = run(make_engine(store), requests, max_tokens=12, temperature=0, ignore_eos=True)
    for (prompt, adapter), tokens in zip(requests, got, strict=True):
        assert tokens == peft_greedy(store, prompt, adapter, 12), adapter
    # The adapters really change the output, so the parity above is not vacuous.
    assert got[0] != peft_greedy(store, PROMPTS[0], None, 12)


def test_preemption_recomputes_to_the_same_tokens(store) -> None:
    requests = mixed_requests()
    roomy = run(make_engine(store), requests, max_tokens=16, temperature=0, ignore_eos=True)
    tight = make_engine(store, num_blocks=10)  # 40 tokens of cache for ~100 tokens of work
    assert run(tight, requests, max_tokens=16, temperature=0, ignore_eos=True) == roomy
    assert tight.block_manager.num_free_blocks == 10


def test_prefix_cache_hits_give_the_tokens_of_a_full_recompute(store) -> None:
    prefix = list(range(60, 74))  # 3 full blocks of 4, then 2 more tokens
    tails = [[7, 8], [9], [7, 8], [1, 2, 3], [7, 8]]
    requests = list(
        zip([prefix + t for t in tails], [None, "all", "attn", "all", None], strict=True)
    )
    params = {"max_tokens": 6, "temperature": 0, "ignore_eos": True}
    cold = run(make_engine(store, enable_prefix_caching=False), requests, **params)
    engine = make_engine(store)
    # Chunked prefill (16 tokens a step) admits the later requests after earlier blocks exist.
    assert run(engine, requests, **params) == cold
    cached: dict[str, int] = {}
    for i, (prompt, adapter) in enumerate(requests):
        engine.add_request(f"again{i}", prompt, SamplingParams(**params), adapter)
    while engine.has_unfinished():
        cached |= {o.request_id: o.num_cached_tokens for o in engine.step()}
    assert all(n >= 12 for n in cached.values()), cached  # every prefix is cached by now
    assert run(engine, requests, **params) == cold
    # Another adapter's cache is never used: a base request after only "all" ran misses.
    fresh = make_engine(store)
    run(fresh, [(prefix, "all")], **params)
    fresh.add_request("base", prefix, SamplingParams(**params), None)
    assert fresh.step()[0].num_cached_tokens == 0


def test_seeded_sampling_is_reproducible_and_abort_frees_blocks(store) -> None:
    engine = make_engine(store)
    requests = mixed_requests()
    first = run(engine, requests, max_tokens=10, temperature=1.0, seed=7, ignore_eos=True)
    again = run(engine, requests[::-1], max_tokens=10, temperature=1.0, seed=7, ignore_eos=True)
    assert first == again[::-1]
    engine.add_request("x", PROMPTS[2], SamplingParams(max_tokens=20), "all")
    engine.step()
    assert engine.block_manager.num_free_blocks < 64
    [out] = engine.abort("x")
    assert out.finished and out.finish_reason == "abort"
    assert engine.block_manager.num_free_blocks == 64 and not engine.has_unfinished()


def test_stop_token_ids_and_length(store) -> None:
    engine = make_engine(store)
    [greedy] = run(engine, [(PROMPTS[0], None)], max_tokens=8, temperature=0, ignore_eos=True)
    stop_at = greedy[3]
    engine.add_request(
        "s",
        PROMPTS[0],
        SamplingParams(max_tokens=8, temperature=0, stop_token_ids=(stop_at,), ignore_eos=True),
        None,
    )
    outs = []
    while engine.has_unfinished():
        outs.extend(engine.step())
    assert outs[-1].finish_reason == "stop"
    assert [t for o in outs for t in o.token_ids] == greedy[: greedy.index(stop_at) + 1]
    engine.add_request("l", PROMPTS[0], SamplingParams(max_tokens=3, ignore_eos=True), None)
    while engine.has_unfinished():
        last = engine.step()[-1]
    assert last.finish_reason == "length" and last.num_output_tokens == 3


def test_bad_requests_are_refused_before_queueing(store) -> None:
    engine = make_engine(store)
    with pytest.raises(AdapterNotFoundError):
        engine.add_request("a", [5], SamplingParams(), "nope")
    with pytest.raises(ParameterError) as err:
        engine.add_request("b", [5] * 60, SamplingParams(max_tokens=10), None)
    assert err.value.param == "max_tokens"
    with pytest.raises(ParameterError):
        engine.add_request("c", [], SamplingParams(), None)
    with pytest.raises(ParameterError):
        engine.add_request("d", [10_000], SamplingParams(), None)
    assert not engine.has_unfinished()


def test_n_samples_fan_out_in_the_engine_with_seed_plus_j(store) -> None:
    """n > 1 is the engine's: child j of a seeded request samples with seed + j, so it equals
    a lone request seeded seed + j, and the outputs say which child they belong to."""
    engine = make_engine(store)
    params = {"max_tokens": 6, "temperature": 1.0, "ignore_eos": True}
    engine.add_request("n", PROMPTS[1], SamplingParams(seed=3, **params), "all", n=3)
    by_index: dict[int, list[int]] = {0: [], 1: [], 2: []}
    while engine.has_unfinished():
        for out in engine.step():
            assert out.request_id == "n"
            by_index[out.index].extend(out.token_ids)
    for j in range(3):
        [alone] = run(engine, [(PROMPTS[1], "all")], seed=3 + j, **params)
        assert by_index[j] == alone
    assert len({tuple(t) for t in by_index.values()}) > 1
    assert engine.num_requests == 0


def test_a_failing_adapter_group_fails_alone_and_the_rest_of_the_step_runs(store) -> None:
    """Issue 10 (2): a forward that fails is retried one adapter group at a time; only the
    group that fails again fails, everyone else gets exactly the tokens of a clean run."""
    requests = [([5, 6, 7], None), ([10, 11], "attn"), ([40, 41, 42], "all"), ([60, 61], None)]
    expected = run(make_engine(store), requests, max_tokens=5, temperature=0, ignore_eos=True)
    engine = make_engine(store)
    poisoned = engine.registry.get("all").key
    real_forward = engine.runner.forward
    calls = {"failed": 0}

    def forward(batch):
        if any(seq.adapter == poisoned for seq in batch.sample_seqs):
            calls["failed"] += 1
            raise RuntimeError("poisoned weights")
        return real_forward(batch)

    engine.runner.forward = forward
    for i, (prompt, adapter) in enumerate(requests):
        engine.add_request(
            str(i), prompt, SamplingParams(max_tokens=5, temperature=0, ignore_eos=True), adapter
        )
    got: dict[str, list[int]] = {str(i): [] for i in range(len(requests))}
    errors: dict[str, Exception] = {}
    while engine.has_unfinished():
        for out in engine.step():
            got[out.request_id].extend(out.token_ids)
            if out.error is not None:
                errors[out.request_id] = out.error
    assert set(errors) == {"2"} and "poisoned weights" in str(errors["2"])
    assert [got[str(i)] for i in (0, 1, 3)] == [expected[i] for i in (0, 1, 3)]
    assert calls["failed"] >= 2  # the mixed step, then the group alone
    assert engine.block_manager.num_free_blocks == 64 and engine.num_requests == 0
