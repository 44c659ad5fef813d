"""``max_tokens: 0`` with ``echo`` on /v1/completions: score a prompt without generating (the
legacy OpenAI API allowed it; lm-evaluation-harness sends it), checked against HF's own
log-softmax, JSON and streamed, through the real ``openai`` client."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import torch
from completion_helpers import PROMPT
from transformers import AutoModelForCausalLM, AutoTokenizer


@pytest.fixture(scope="module")
def hf_logprobs(tiny_model_dir: Path) -> tuple[list[int], list[float]]:
    """The prompt's ids and log p(token i | tokens before it) for i >= 1, from HF."""
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(PROMPT).input_ids
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.inference_mode():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return ids, [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def test_max_tokens_0_with_echo_scores_the_prompt(
    client: openai.OpenAI, base_name: str, hf_logprobs: tuple[list[int], list[float]]
) -> None:
    ids, expected = hf_logprobs
    result = client.completions.create(
        model=base_name, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1, temperature=0
    )
    [choice] = result.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert result.usage.completion_tokens == 0 and result.usage.prompt_tokens == len(ids)
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)


def test_max_tokens_0_with_echo_streams_one_chunk(
    client: openai.OpenAI, base_name: str, hf_logprobs: tuple[list[int], list[float]]
) -> None:
    _, expected = hf_logprobs
    chunks = list(
        client.completions.create(
            model=base_name, prompt=[PROMPT, PROMPT], max_tokens=0, echo=True, logprobs=0,
            stream=True,
        )
    )  # fmt: skip
    texts = {c.choices[0].index: c.choices[0].text for c in chunks if c.choices}
    assert texts == {0: PROMPT, 1: PROMPT}
    for chunk in chunks:
        for choice in chunk.choices:
            assert choice.finish_reason == "length"
            assert choice.logprobs.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)


def test_max_tokens_0_without_echo_is_a_400_that_says_why(live_server: str, base_name: str) -> None:
    body = {"model": base_name, "prompt": PROMPT, "max_tokens": 0}
    response = httpx.post(f"{live_server}/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and "echo" in error["message"]
