"""The step's mask: constrained rows lose exactly the tokens their grammar refuses (padded
vocabulary included), free rows keep every bit of their logits, in one call."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from loraplex.config import StructuredConfig
from loraplex.engine.constraints import ConstraintMasks, GrammarService
from loraplex.engine.constraints import spec as specs


def allowed(matcher, vocab: int) -> torch.Tensor:
    """bool [vocab]: the tokens ``matcher`` allows next, from its own one-row bitmask."""
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(1, vocab)
    matcher.fill_next_token_bitmask(bitmask)
    bits = (bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.view(-1)[:vocab].bool()


def test_constrained_rows_are_masked_exactly_and_free_rows_untouched(tiny_model_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    vocab = len(tokenizer) + 7  # the model's vocabulary padded past the tokenizer's
    grammars = GrammarService(
        tokenizer, vocab, frozenset({tokenizer.eos_token_id}), StructuredConfig()
    )
    schema = grammars.compile_now(specs.json_schema({"type": "object"}, "response_format"))
    choice = grammars.compile_now(specs.choice(["yes", "no"], "guided_choice"))
    started = schema.matcher()
    assert started.accept_string('{"a": ')
    done = choice.matcher()
    assert done.accept_string("yes")  # complete: only EOS may follow
    matchers = [None, schema.matcher(), None, started, done, None, choice.matcher()]
    masks = ConstraintMasks(vocab, torch.device("cpu"))
    for rows in (2, len(matchers)):  # the buffer grows on demand
        torch.manual_seed(rows)
        logits = torch.randn(rows, vocab)
        original = logits.clone()
        with torch.inference_mode():  # the engine's logits are inference tensors
            logits = logits.clone()
            masks.apply(logits, matchers[:rows])
        for i, matcher in enumerate(matchers[:rows]):
            if matcher is None:
                assert torch.equal(logits[i], original[i])
                continue
            ok = allowed(matcher, vocab)
            assert not ok[len(tokenizer) :].any()  # padding is never allowed
            assert torch.equal(logits[i][ok], original[i][ok])
            assert torch.isneginf(logits[i][~ok]).all()
    assert allowed(done, vocab).nonzero().flatten().tolist() == [tokenizer.eos_token_id]
