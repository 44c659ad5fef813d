"""The native TGI/LoRAX-style API: ``POST /generate`` (JSON) and ``POST /generate_stream`` (one
server-sent event per token, no ``[DONE]``), on the machinery of :mod:`loraplex.api.generation`.

``parameters.adapter_id`` names an adapter (empty or the base model id: no adapter);
``parameters.merged_adapters`` with ``merge_strategy: "linear"`` is the weighted combination the
OpenAI routes take as ``adapters``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fastapi import APIRouter, Request, Response

from loraplex.api.auth import GENERATE, Principal, PrincipalDep, allow
from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.errors import APIError
from loraplex.api.generate_schemas import (
    Details,
    GenerateParameters,
    GenerateRequest,
    GenerateResponse,
    StreamDetails,
    StreamResponse,
    Token,
)
from loraplex.api.generation import Choice, Run, resolve_adapter, resolve_mix, run_to_end, start
from loraplex.api.streaming import stream_response
from loraplex.engine import AdapterSpec, AsyncEngine, RequestOutput, TokenLogprob

router = APIRouter(tags=["generate"], dependencies=[AuthDep, allow(GENERATE)])


def _adapter(
    engine: AsyncEngine, principal: Principal, parameters: GenerateParameters
) -> AdapterSpec:
    mix = parameters.adapter_mix()
    if mix is not None:
        return resolve_mix(engine, principal, mix, param="merged_adapters")
    if not parameters.adapter_id:
        return None
    return resolve_adapter(engine, principal, parameters.adapter_id, param="adapter_id")


async def _start(
    request: Request, body: GenerateRequest, engine: AsyncEngine, principal: Principal
) -> Run:
    if not body.inputs:
        raise APIError(400, "inputs must not be empty", param="inputs", code="invalid_value")
    adapter = _adapter(engine, principal, body.parameters)
    params = body.parameters.sampling_params()
    return await start(request, engine, principal, adapter, [body.inputs], params, id_prefix="gen")


def _details(engine: AsyncEngine, run: Run, choice: Choice) -> StreamDetails:
    """How and why a finished choice ended, in TGI's words."""
    reason = choice.finish_reason or "stop"
    if reason == "stop":
        eos = bool(choice.token_ids) and choice.token_ids[-1] in engine.eos_token_ids
        reason = "eos_token" if eos else "stop_sequence"
    return StreamDetails(
        finish_reason=reason,
        generated_tokens=choice.completion_tokens,
        seed=None if run.params.greedy else run.params.seed,
        input_length=choice.prompt_tokens,
    )


def _decoded(
    engine: AsyncEngine, pairs: Iterable[tuple[int, float | None]], special: set[int]
) -> list[Token]:
    """A Token per ``(id, logprob)``, each id decoded on its own."""
    decode = engine.tokenizer.decode
    return [Token(id=t, text=decode([t]), logprob=lp, special=t in special) for t, lp in pairs]


def _top_tokens(engine: AsyncEngine, logprob: TokenLogprob, special: set[int]) -> list[Token]:
    """The ``top_n_tokens`` most likely tokens at one step, most likely first."""
    return _decoded(engine, logprob.top, special)


def _prefill(engine: AsyncEngine, run: Run, choice: Choice, special: set[int]) -> list[Token]:
    """With ``decoder_input_details``: each prompt token and its logprob (the first has none)."""
    if choice.prompt_logprobs is None:
        return []
    logprobs = [None if lp is None else lp.logprob for lp in choice.prompt_logprobs]
    return _decoded(engine, zip(run.prompt_ids(choice), logprobs, strict=True), special)


def _text(body: GenerateRequest, choice: Choice) -> str:
    prefix = body.inputs if body.parameters.return_full_text else ""
    return prefix + choice.full_text


@router.post("/generate", response_model=GenerateResponse)
async def generate(
    body: GenerateRequest, request: Request, engine: EngineDep, principal: PrincipalDep
) -> Response | GenerateResponse:
    """The whole generated text, and with ``parameters.details`` how and why it ended."""
    run = await _start(request, body, engine, principal)
    if not await run_to_end(request, run):
        return Response(status_code=499)  # nobody is listening; for the access log
    [choice] = run.choices
    details = None
    if body.parameters.details:
        special = set(engine.tokenizer.all_special_ids)
        # One output per token, so the text deltas line up with the tokens.
        tokens = [
            Token(id=t, text=text, logprob=lp.logprob, special=t in special)
            for t, text, lp in zip(choice.token_ids, choice.text, choice.logprobs, strict=False)
        ]
        top = [_top_tokens(engine, lp, special) for lp in choice.logprobs]
        details = Details(
            **_details(engine, run, choice).model_dump(),
            prefill=_prefill(engine, run, choice, special),
            tokens=tokens,
            top_tokens=top if body.parameters.top_n_tokens else [],
        )
    return GenerateResponse(generated_text=_text(body, choice), details=details)


@router.post("/generate_stream", response_class=Response)
async def generate_stream(
    body: GenerateRequest, request: Request, engine: EngineDep, principal: PrincipalDep
) -> Response:
    """One event per token: ``{"index", "token": {"id", "text", "logprob", "special"},
    "generated_text": null, "details": null}``; on the last, the whole text (and the details
    when ``parameters.details``). Concatenating the token texts gives the whole text."""
    run = await _start(request, body, engine, principal)
    special = set(engine.tokenizer.all_special_ids)

    def render(choice: Choice, out: RequestOutput) -> Iterator[str]:
        if not out.token_ids:  # aborted (the server is stopping): nothing to send but that
            raise APIError(503, "The request was aborted.", code="aborted")
        first_index = choice.completion_tokens - len(out.token_ids) + 1
        last = len(out.token_ids) - 1
        for i, token_id in enumerate(out.token_ids):
            # The text of a step's tokens rides on its last one.
            text = out.text if i == last else ""
            lp = out.logprobs[i] if out.logprobs else None
            event = StreamResponse(
                index=first_index + i,
                token=Token(
                    id=token_id,
                    text=text,
                    logprob=None if lp is None else lp.logprob,
                    special=token_id in special,
                ),
                top_tokens=_top_tokens(engine, lp, special) if lp else [],
            )
            if out.finished and i == last:
                event.generated_text = _text(body, choice)
                if body.parameters.details:
                    event.details = _details(engine, run, choice)
            yield event.model_dump_json()

    return await stream_response(request, run, render, done=False)
