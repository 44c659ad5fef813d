"""What every generating route shares: the adapter resolved once (:func:`request_adapter`), then
:func:`start`: the cheap refusals first, tokenizing, one engine request (every prompt, ``n``
samples each), read as a :class:`Run` and drained into a result (``streaming.py`` turns it into
server-sent events instead).

A client that hangs up stops our reading, which closes the engine's stream: the engine aborts
the request and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterRefusedError
from loraplex.api.auth import Principal
from loraplex.api.errors import APIError
from loraplex.api.schemas import PromptTokensDetails, SamplingRequest, UsageInfo
from loraplex.api.text_pool import text_pool
from loraplex.engine import (
    AdapterSpec,
    AsyncEngine,
    RequestOutput,
    RequestStream,
    SamplingParams,
    TokenLogprob,
)

T = TypeVar("T")
# A request's prompts: texts or token ids, or a coroutine function that renders one text (a
# chat template) once the request has passed the queue check.
Prompts = list[str | list[int]] | Callable[[], Awaitable[str]]


def resolve_adapter(
    engine: AsyncEngine, principal: Principal, model: str, param: str = "model"
) -> AdapterCard | None:
    """``model`` names the base model (no adapter) or an adapter the caller sees (its own, then
    a public one; an admin also ``tenant/name``); anything else, another tenant's adapter
    included, is the same 404. Returns the adapter's card: the engine looks nothing up again."""
    if model == engine.model_name:
        return None
    card = visible_adapter(engine, principal, model, param)
    if card is None:
        message = f"The model `{model}` does not exist."
        raise APIError(404, message, param=param, code="model_not_found")
    return card


def visible_adapter(
    engine: AsyncEngine, principal: Principal, name: str, param: str = "model"
) -> AdapterCard | None:
    """The card of the adapter ``name`` means to this caller, or None (unknown, or another
    tenant's), found with one lookup per name the rules try. One refused at start resolves by
    the same rules (its owner's, or public) and is a 400 that says why and which option to
    change, not "does not exist"; another tenant's refusal is as unknown as its adapters are."""
    found = principal.lookup(name, engine.adapters.find)
    if isinstance(found, AdapterRefusedError):  # named as the caller spelled it
        refused = AdapterRefusedError(name, found.reason)
        raise APIError(400, str(refused), param=param, code="adapter_refused")
    return found


def resolve_mix(
    engine: AsyncEngine,
    principal: Principal,
    mix: list[tuple[str, float]],
    param: str = "adapters",
) -> AdapterSpec:
    """A weighted combination ``[(name, weight), ...]``; every name must resolve (else 404)."""
    resolved: list[tuple[str | AdapterCard, float]] = []
    for name, weight in mix:
        card = visible_adapter(engine, principal, name, param)
        if card is None:
            message = f"The adapter `{name}` does not exist."
            raise APIError(404, message, param=param, code="model_not_found")
        resolved.append((card, weight))
    return resolved


def request_adapter(
    engine: AsyncEngine, principal: Principal, body: SamplingRequest
) -> AdapterSpec:
    """The adapter of an OpenAI request: the ``adapters`` mix if given, else ``model``."""
    if body.adapters is not None and body.model != engine.model_name:
        resolve_adapter(engine, principal, body.model)  # an unknown model is a 404 first
    mix = body.adapter_mix(engine.model_name)
    if mix is None:
        return resolve_adapter(engine, principal, body.model)
    return resolve_mix(engine, principal, mix)


async def tokenize(
    request: Request,
    engine: AsyncEngine,
    prompt: str | list[int],
    special: bool = True,
    param: str = "prompt",
) -> list[int]:
    """Token ids of one prompt, computed in the app's text pool (never on the event loop);
    ``special``: add the special tokens the tokenizer adds by default (off for text a chat
    template rendered, which has them already); ``param``: the request field it came from, for
    errors. Token-id prompts pass through; the engine checks them against the vocabulary."""
    if isinstance(prompt, str):
        engine.intake.check_text(prompt, param)
        encoded = await text_pool(request).run(engine.tokenizer, prompt, add_special_tokens=special)
        return list(encoded.input_ids)
    return prompt


async def start(
    request: Request,
    engine: AsyncEngine,
    principal: Principal,
    adapter: AdapterSpec,
    prompts: Prompts,
    params: SamplingParams | Callable[[list[int]], SamplingParams],
    *,
    n: int = 1,
    cache_salt: str | None = None,
    id_prefix: str = "cmpl",
) -> Run:
    """The start of every generating request, in the order that keeps refusals cheap: the
    fan-out (400) and the caller's share of the queue (429, or 503) before anything is rendered
    or tokenized; then the prompts tokenized in the text pool; then one engine request in the
    caller's tenant (its queue share; prefix blocks shared within it only, plus ``cache_salt``).

    ``adapter``: resolved already (:func:`request_adapter`). ``prompts``: texts or token ids,
    or a coroutine function rendering one text from ``messages`` (a chat template: it writes
    its own special tokens). ``params``: or a function of the first prompt's token ids.
    """
    rendered = callable(prompts)
    engine.intake.check_fanout(1 if rendered else len(prompts), n)
    engine.check_queue(principal.tenant)
    texts = [await prompts()] if rendered else prompts
    # A rendered template wrote its special tokens (BOS, turn markers): don't add them again.
    param = "messages" if rendered else "prompt"
    ids = [await tokenize(request, engine, text, not rendered, param) for text in texts]
    if callable(params):
        params = params(ids[0])
    run_id = f"{id_prefix}-{uuid.uuid4().hex}"
    stream = await engine.submit(
        run_id,
        ids,
        params,
        adapter,
        n=n,
        cache_salt=principal.cache_salt(cache_salt),
        tenant=principal.tenant,
    )
    return Run(run_id, stream, ids, params, n)


@dataclass
class Choice:
    """What one choice (sample ``j`` of prompt ``i``: ``index = i * n + j``) has produced."""

    index: int
    text: list[str] = field(default_factory=list)  # one delta per output
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)  # when the request asked
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None  # when it asked for them
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    started: bool = False
    finish_reason: str | None = None

    def add(self, out: RequestOutput) -> None:
        if not self.started:
            self.started = True
            self.prompt_tokens = out.num_prompt_tokens
            self.cached_tokens = out.num_cached_tokens
            self.prompt_logprobs = out.prompt_logprobs
        self.completion_tokens = out.num_output_tokens
        self.text.append(out.text)
        self.token_ids.extend(out.token_ids)
        self.logprobs.extend(out.logprobs or ())
        if out.finished:
            self.finish_reason = out.finish_reason or "stop"

    @property
    def full_text(self) -> str:
        return "".join(self.text)


class Run:
    """One engine request for one HTTP request: ``n`` samples of each prompt, its outputs read
    from the engine's stream and recorded per choice (the engine does the fan-out and seeds)."""

    def __init__(
        self,
        run_id: str,
        stream: RequestStream,
        prompts: list[list[int]],
        params: SamplingParams,
        n: int = 1,
    ) -> None:
        self.id = run_id
        self.params, self.n, self.prompts = params, n, prompts
        self.created = int(time.time())
        self.choices = [Choice(i) for i in range(len(prompts) * n)]
        self._stream = stream

    def prompt_ids(self, choice: Choice) -> list[int]:
        """The token ids of the prompt ``choice`` answers."""
        return self.prompts[choice.index // self.n]

    async def next(self) -> tuple[Choice, RequestOutput] | None:
        """The next output of any choice (recorded in it), or None when all are done. Safe to
        cancel: no output is lost."""
        item = await self._stream.next()
        if item is None:
            return None
        choice = self.choices[item.index]
        choice.add(item)
        return choice, item

    def close(self) -> None:
        """Stop reading: the engine aborts whatever is unfinished (idempotent)."""
        self._stream.close()

    async def aclose(self) -> None:
        self.close()

    def usage(self) -> UsageInfo:
        """Each prompt counts once, however many samples it has (as OpenAI counts it)."""
        firsts = self.choices[:: self.n]
        prompt = sum(c.prompt_tokens for c in firsts)
        completion = sum(c.completion_tokens for c in self.choices)
        cached = sum(c.cached_tokens for c in firsts)
        return UsageInfo(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=prompt + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )


async def unless_hung_up(request: Request, work: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
    """Await ``work`` unless the client hangs up first (then ``work`` is cancelled): returns
    (finished, its result). Its exception is raised. The body must be read already, so the
    next ASGI message can only be the disconnect."""

    async def hang_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(hang_up())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        task.cancel()  # no-op when done
    if task.done() and not task.cancelled():
        return True, task.result()
    return False, None


async def run_to_end(request: Request, run: Run) -> bool:
    """Read every output of ``run``; False if the client hung up first (then nothing is left
    running). An engine error is raised, for the error handlers."""

    async def drain() -> None:
        while await run.next() is not None:
            pass

    try:
        finished, _ = await unless_hung_up(request, drain())
    finally:
        run.close()
    return finished
