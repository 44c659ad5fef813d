"""Sampler: greedy, filters, temperature, seeding and penalties, checked against hand math."""

from __future__ import annotations

import pytest
import torch

from loraplex.engine.request.params import SamplingParams
from loraplex.engine.sample.logprobs import read_sampled
from loraplex.engine.sample.sampler import Sampler, apply_penalties, filter_top_k_top_p

V = 8


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None] | None = None,
    prompt_ids: list[list[int]] | None = None,
    output_ids: list[list[int]] | None = None,
) -> list[int]:
    n = len(params)
    return (
        Sampler()
        .sample(
            logits,
            params,
            prompt_ids or [[] for _ in range(n)],
            output_ids or [[] for _ in range(n)],
            generators or [None] * n,
        )
        .tolist()
    )


def counts_of(
    logits: torch.Tensor, params: SamplingParams, draws: int, seed: int = 0
) -> torch.Tensor:
    """Empirical token counts from ``draws`` rows of the same logits, sampled in one batch."""
    torch.manual_seed(seed)
    batch = logits.unsqueeze(0).expand(draws, -1)
    tokens = sample(batch, [params] * draws)
    return torch.bincount(torch.tensor(tokens), minlength=logits.shape[-1])


def test_empty_batch() -> None:
    assert sample(torch.zeros(0, V), []) == []


def test_greedy_equals_argmax() -> None:
    logits = torch.randn(5, 100, generator=torch.Generator().manual_seed(1))
    assert sample(logits, [SamplingParams(temperature=0.0)] * 5) == logits.argmax(-1).tolist()


def test_greedy_computes_in_float32_for_half_logits() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    params = [SamplingParams(temperature=0.0, presence_penalty=0.5)] * 3  # forces slow path
    expected = logits.float().argmax(-1).tolist()
    assert sample(logits, params, output_ids=[[] for _ in range(3)]) == expected


@pytest.mark.parametrize("temperature", [0.1, 1.0, 2.0])
def test_top_k_one_is_greedy(temperature: float) -> None:
    logits = torch.randn(16, 100, generator=torch.Generator().manual_seed(3))
    params = [SamplingParams(temperature=temperature, top_k=1)] * 16
    assert sample(logits, params) == logits.argmax(-1).tolist()


def test_same_seed_same_tokens_different_seed_different() -> None:
    logits = torch.zeros(1, 1000)  # uniform: every draw is pure generator noise

    def draw(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return [sample(logits, [SamplingParams(seed=seed)], [g])[0] for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_seeded_row_ignores_global_rng_and_batch_neighbours() -> None:
    logits = torch.zeros(3, 1000)
    params = [SamplingParams(), SamplingParams(seed=5), SamplingParams()]
    torch.manual_seed(0)
    a = sample(logits, params, [None, torch.Generator().manual_seed(5), None])
    torch.manual_seed(1)
    b = sample(logits, params, [None, torch.Generator().manual_seed(5), None])
    solo = sample(logits[:1], params[1:2], [torch.Generator().manual_seed(5)])
    assert a[1] == b[1] == solo[0]
    assert (a[0], a[2]) != (b[0], b[2])  # unseeded rows do follow the global RNG


def test_top_p_never_samples_outside_nucleus() -> None:
    probs = torch.tensor([0.5, 0.3, 0.1, 0.05, 0.03, 0.01, 0.005, 0.005])
    # Mass before token 2 is 0.8 < 0.85, so the nucleus is {0, 1, 2}.
    counts = counts_of(probs.log(), SamplingParams(top_p=0.85), draws=4000)
    assert counts[3:].sum() == 0
    assert (counts[:3] > 0).all()


def test_top_p_keeps_top_token_even_if_tiny_p() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    probs = filter_top_k_top_p(logits, torch.tensor([0]), torch.tensor([1e-6]))
    assert probs[0].tolist() == pytest.approx([logits.softmax(-1)[0, 0].item(), 0, 0, 0])


def test_top_k_then_top_p_renormalizes_before_nucleus() -> None:
    # After top_k=2 the kept probs are softmax([2, 1]) = [0.731, 0.269]; top_p=0.7 keeps 1 token.
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]])
    probs = filter_top_k_top_p(logits, torch.tensor([2]), torch.tensor([0.7]))
    assert (probs[0] > 0).tolist() == [True, False, False, False]
    probs = filter_top_k_top_p(logits, torch.tensor([2]), torch.tensor([1.0]))
    assert (probs[0] > 0).tolist() == [True, True, False, False]


def test_filters_keep_vocab_order_per_row() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0], [9.0, 0.0, 8.0, 1.0]])
    probs = filter_top_k_top_p(logits, torch.tensor([2, -1]), torch.tensor([1.0, 1.0]))
    assert (probs[0] > 0).tolist() == [False, True, False, True]
    assert (probs[1] > 0).all()


def test_sampling_matches_softmax_distribution() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, -2.0])
    freq = counts_of(logits, SamplingParams(), draws=20000).float() / 20000
    assert freq.tolist() == pytest.approx(logits.softmax(-1).tolist(), abs=0.015)


def test_lower_temperature_sharpens_higher_flattens() -> None:
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5])
    top_share = {
        t: counts_of(logits, SamplingParams(temperature=t), draws=8000)[0].item() / 8000
        for t in (0.3, 1.0, 2.0)
    }
    expected = {t: (logits / t).softmax(-1)[0].item() for t in top_share}
    assert top_share[0.3] > top_share[1.0] > top_share[2.0]
    for t, share in top_share.items():
        assert share == pytest.approx(expected[t], abs=0.03)


def test_repetition_penalty_formula() -> None:
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0, 0.5]])
    out = apply_penalties(logits, [SamplingParams(repetition_penalty=2.0)], [[0, 1]], [[3, 3]])
    # Seen: 0, 1 (prompt) and 3 (output): positive / 2, non-positive * 2; 2 and 4 untouched.
    assert out[0].tolist() == pytest.approx([1.0, -4.0, 3.0, -2.0, 0.5])


def test_presence_and_frequency_penalties_use_output_only() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = apply_penalties(logits, [params], [[0, 0, 0]], [[1, 2, 2, 2]])
    # Token 0 is only in the prompt: untouched. Token 1 once: 1 - 0.25 - 0.5.
    # Token 2 three times: 1 - 3 * 0.25 - 0.5.
    assert out[0].tolist() == pytest.approx([1.0, 0.25, -0.25, 1.0])


def test_all_penalties_together_and_per_row() -> None:
    logits = torch.tensor([[4.0, -1.0, 2.0], [4.0, -1.0, 2.0]])
    params = [
        SamplingParams(repetition_penalty=2.0, presence_penalty=1.0, frequency_penalty=0.5),
        SamplingParams(),
    ]
    out = apply_penalties(logits, params, [[2], [2]], [[0, 0, 1], [0, 0, 1]])
    # Row 0: repetition first, then 0: 4/2 - 1 - 2*0.5 = 0; 1: -1*2 - 1 - 0.5 = -3.5; 2: 2/2 = 1.
    assert out[0].tolist() == pytest.approx([0.0, -3.5, 1.0])
    assert out[1].tolist() == logits[1].tolist()  # neutral params leave the row exactly as is


def test_penalties_steer_greedy_choice() -> None:
    logits = torch.tensor([[2.0, 1.9, 0.0]])
    params = [SamplingParams(temperature=0.0, frequency_penalty=0.2)]
    assert sample(logits, params, output_ids=[[0]]) == [1]
    assert sample(logits, params, output_ids=[[2]]) == [0]
    assert logits[0, 0] == 2.0  # caller's logits are not modified


def test_mixed_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=gen)
    logits[2] = float("-inf")
    logits[2, 17] = 0.0  # only one finite logit: sampling must pick it
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.7, top_k=1),
        SamplingParams(temperature=1.3, top_p=0.9, seed=1),
        SamplingParams(temperature=0.0, repetition_penalty=1e6),
    ]
    out = sample(
        logits,
        params,
        generators=[None, None, torch.Generator().manual_seed(1), None],
        prompt_ids=[[], [], [], [int(logits[3].argmax())]],
        output_ids=[[], [], [], []],
    )
    assert out[0] == logits[0].argmax().item()
    assert out[1] == logits[1].argmax().item()
    assert out[2] == 17
    assert out[3] == logits[3].topk(2).indices[1].item()  # the top token was penalised away


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_mixed_batch_syncs_with_the_device_once(recwarn: pytest.WarningsRecorder) -> None:
    """Penalties, top-k/top-p, seeds and logprobs on the device: the only synchronizing call
    is the one copy of the results (CUDA's sync debug mode warns at every other)."""
    cuda = torch.device("cuda")
    logits = torch.randn(4, V, device=cuda)
    params = [
        SamplingParams(temperature=0, repetition_penalty=1.3, frequency_penalty=0.5),
        SamplingParams(temperature=0.8, top_k=3, top_p=0.9, logprobs=2),
        SamplingParams(temperature=1.0, seed=7),
        SamplingParams(temperature=0, logprobs=0),
    ]
    generators = [None, None, torch.Generator(device=cuda).manual_seed(7), None]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        tokens = Sampler().sample(logits, params, [[1, 2]] * 4, [[3], [], [4], []], generators)
        ids, entries = read_sampled(tokens, logits, [p.logprobs for p in params])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in recwarn if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    assert len(ids) == 4 and entries[0] is None and len(entries[1].top) == 2
