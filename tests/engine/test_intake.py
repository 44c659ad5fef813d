"""Intake: every check a request passes before it is queued (fan-out, text, prompts), each
refusal a ParameterError naming the request field."""

from __future__ import annotations

import pytest
from builders import word_tokenizer

from loraplex.engine.errors import ParameterError
from loraplex.engine.intake import Intake
from loraplex.engine.request.params import SamplingParams

VOCAB, CONTEXT = 96, 32


@pytest.fixture(scope="module")
def intake() -> Intake:
    return Intake(word_tokenizer(), VOCAB, CONTEXT, max_seqs_per_request=8)


def refused(check, *args) -> ParameterError:
    with pytest.raises(ParameterError) as err:
        check(*args)
    return err.value


def test_fanout(intake: Intake) -> None:
    intake.check_fanout(4, 2)
    assert refused(intake.check_fanout, 3, 3).param == "n"
    assert refused(intake.check_fanout, 9, 1).param == "prompt"
    assert "--max-seqs-per-request" in str(refused(intake.check_fanout, 9, 1))


def test_text_is_refused_before_tokenizing(intake: Intake) -> None:
    intake.check_text("t5 t6")
    assert refused(intake.check_text, "t5 \ud800", "messages").param == "messages"
    # The longest entry is 3 characters ("t95"), so 32 tokens are at most 96 characters.
    longest = intake.max_chars_per_token
    assert longest == 3
    intake.check_length("x" * CONTEXT * longest)
    error = refused(intake.check_length, "x" * (CONTEXT * longest + 1), "prompt")
    assert error.param == "prompt" and "context length of 32" in str(error)


def test_prompts(intake: Intake) -> None:
    params = SamplingParams(max_tokens=4)
    intake.check_request([[5, 6], [7]], params, 2)
    assert refused(intake.check_prompt, [], params).param == "prompt"
    assert refused(intake.check_prompt, [VOCAB], params).param == "prompt"
    assert refused(intake.check_prompt, [-1], params).param == "prompt"
    assert refused(intake.check_prompt, [5] * 30, params).param == "max_tokens"
    assert refused(intake.check_prompt, [5] * CONTEXT, params).param == "prompt"
    assert refused(intake.check_request, [[5]] * 5, params, 2).param == "n"
