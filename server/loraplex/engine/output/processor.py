"""After the forward: append each sampled token, detokenize, decide stops, build the outputs.

Runs on the engine thread and never calls back into the engine: a child that stops gets its
``finish_reason`` and is returned among the step's finished states, which the engine then
finishes (blocks freed, adapter released). Also the one place that records a request's latency
metrics (queue time, time to first token, inter-token latency, generated tokens, end-to-end time
and outcome by adapter), so anything that drives the engine, HTTP or not, reports the same
numbers.
"""

from __future__ import annotations

import time

import torch

from loraplex import metrics
from loraplex.adapters.card import adapter_name
from loraplex.engine.constraints import accept
from loraplex.engine.errors import ConstraintViolationError
from loraplex.engine.output.state import RequestState
from loraplex.engine.request.outputs import RequestOutput, TokenLogprob
from loraplex.engine.request.sequence import Sequence
from loraplex.engine.sample.logprobs import token_logprobs


class OutputProcessor:
    """Turns sampled tokens into :class:`RequestOutput` deltas and decides what stops."""

    def __init__(self, eos_token_ids: frozenset[int], max_model_len: int) -> None:
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len

    def process(
        self,
        states: list[RequestState],
        tokens: list[int],
        logprobs: list[TokenLogprob | None],
        logits: torch.Tensor,
        prompt_targets: list[tuple[Sequence, int]],
    ) -> tuple[list[RequestOutput], list[RequestState]]:
        """One output per sampled row, with its logprob entry (None: not asked for), and the
        states that stopped this step (their ``finish_reason`` set) for the engine to finish.
        ``logits`` [N + M, V]: rows of ``states`` (N), then one row per ``prompt_targets``
        entry (M prompt tokens to score, usually none)."""
        if prompt_targets:
            score_prompts(logits[len(states) :], prompt_targets)
        outputs = [
            self.advance(state, token, logprob)
            for state, token, logprob in zip(states, tokens, logprobs, strict=True)
        ]
        return outputs, [state for state in states if state.finish_reason is not None]

    def advance(
        self, state: RequestState, token: int, logprob: TokenLogprob | None = None
    ) -> RequestOutput:
        """Append one sampled token, detokenize it and decide whether the sequence is done
        (then ``state.finish_reason`` is set)."""
        seq, params = state.seq, state.params
        if params.max_tokens == 0:  # scoring only: the prompt ran (its logprobs are in)
            state.finish_reason = "length"
            return self.output(state, "", (), "length")
        seq.append_token(token)
        reason, text = None, ""
        if state.matcher is not None and not accept(state.matcher, token):
            state.finish_reason = "abort"  # a server fault: this request ends, the others go on
            return self.output(state, "", (), "abort", error=ConstraintViolationError(token))
        if (
            token in params.stop_token_set
            or (token in self.eos_token_ids and not params.ignore_eos)
            or (state.matcher is not None and state.matcher.is_terminated())  # grammar's EOS
        ):
            reason = "stop"
        else:
            text, hit_stop = state.detokenizer.step(token)
            if hit_stop:
                reason = "stop"
            elif seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
                reason = "length"
        if reason is not None:
            if reason != "stop" or not state.detokenizer.stopped:
                text += state.detokenizer.flush()
            state.finish_reason = reason
        return self.output(state, text, (token,), reason, logprob)

    def output(
        self,
        state: RequestState,
        text: str,
        tokens: tuple[int, ...],
        reason: str | None,
        logprob: TokenLogprob | None = None,
        error: Exception | None = None,
    ) -> RequestOutput:
        """The delta of one child; records its metrics (first output, tokens, the end)."""
        seq = state.seq
        now = time.monotonic()
        arrival = state.parent.arrival_time
        if state.first_token_time is None and tokens:
            state.first_token_time = now
            metrics.record_first_token(now - arrival, seq.num_prompt_tokens, seq.num_cached_tokens)
            if seq.first_scheduled_time is not None:
                metrics.record_queue_time(seq.first_scheduled_time - arrival)
        elif tokens and state.last_token_time is not None:
            metrics.record_token_gap(now - state.last_token_time)
        if tokens:
            state.last_token_time = now
        metrics.record_generated_tokens(len(tokens))
        if reason is not None:
            started = state.first_token_time is not None
            metrics.record_finished(
                reason,
                now - arrival if started else None,
                None if seq.adapter is None else adapter_name(seq.adapter),
                failed=error is not None,
            )
        prompt_logprobs = None
        done = reason is not None and error is None  # a request that ran, maybe to no token
        if seq.wants_prompt_logprobs and not state.sent_prompt_logprobs and (tokens or done):
            state.sent_prompt_logprobs = True
            prompt_logprobs = tuple(seq.prompt_logprobs)
        return RequestOutput(
            request_id=state.parent.request_id,
            index=state.index,
            text=text,
            token_ids=tokens,
            finished=reason is not None,
            finish_reason=reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_output_tokens=seq.num_output_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            logprobs=None if logprob is None else (logprob,),
            prompt_logprobs=prompt_logprobs,
            error=error,
        )


def score_prompts(logits: torch.Tensor, targets: list[tuple[Sequence, int]]) -> None:
    """Append each prompt token's logprob (row m of ``logits`` scores ``targets[m]``)."""
    tokens = [token for _, token in targets]
    top_k = [seq.params.prompt_logprobs or 0 for seq, _ in targets]
    for (seq, _), entry in zip(targets, token_logprobs(logits, tokens, top_k), strict=True):
        seq.prompt_logprobs.append(entry)
