"""What every generating route shares: resolve the adapter, tokenize, run one engine request
(every prompt, ``n`` samples each) and drain it into a result (``streaming.py`` turns it into
server-sent events instead).

A client that hangs up stops our iteration, which makes the engine abort the request and free
its KV blocks.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from loraplex.api.auth import Principal
from loraplex.api.errors import APIError
from loraplex.api.schemas import PromptTokensDetails, SamplingRequest, UsageInfo
from loraplex.api.text_pool import text_pool
from loraplex.engine.adapters import AdapterSpec
from loraplex.engine.admission import DEFAULT_TENANT
from loraplex.engine.async_engine import AsyncEngine
from loraplex.engine.outputs import RequestOutput, TokenLogprob
from loraplex.engine.sampling_params import ParameterError, SamplingParams

T = TypeVar("T")


def resolve_adapter(
    engine: AsyncEngine, principal: Principal, model: str, param: str = "model"
) -> str | None:
    """``model`` names the base model (no adapter) or an adapter the caller sees (its own, then
    a public one; an admin also ``tenant/name``); anything else, another tenant's adapter
    included, is the same 404. Returns the qualified name."""
    if model == engine.model_name:
        return None
    qualified = visible_adapter(engine, principal, model, param)
    if qualified is None:
        message = f"The model `{model}` does not exist."
        raise APIError(404, message, param=param, code="model_not_found")
    return qualified


def visible_adapter(
    engine: AsyncEngine, principal: Principal, name: str, param: str = "model"
) -> str | None:
    """The qualified name of the adapter ``name`` means to this caller, or None (unknown, or
    another tenant's). One refused at start resolves by the same rules (its owner's, or public)
    and is a 400 that says why and which option to change, not "does not exist"; another
    tenant's refusal is as unknown as its adapters are."""
    qualified = principal.resolve(name, engine.adapters.known)
    if qualified is not None:
        refused = engine.adapters.refusal(qualified, shown=name)
        if refused is not None:
            raise APIError(400, str(refused), param=param, code="adapter_refused")
    return qualified


def resolve_mix(
    engine: AsyncEngine,
    principal: Principal,
    mix: list[tuple[str, float]],
    param: str = "adapters",
) -> AdapterSpec:
    """A weighted combination ``[(name, weight), ...]``; every name must resolve (else 404)."""
    resolved = []
    for name, weight in mix:
        qualified = visible_adapter(engine, principal, name, param)
        if qualified is None:
            message = f"The adapter `{name}` does not exist."
            raise APIError(404, message, param=param, code="model_not_found")
        resolved.append((qualified, weight))
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


def check_text(text: str, param: str) -> None:
    """Text must be encodable as UTF-8: JSON allows lone surrogates (``"\\ud800"``), which no
    tokenizer takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ParameterError(param, f"{param} holds a lone surrogate at {exc.start}") from None


@functools.cache
def _max_chars_per_token(tokenizer: Any) -> int:
    """The longest vocabulary entry, in characters: no token decodes to more characters than
    its own entry has (byte-level entries spell one character per byte, SentencePiece ones
    one per character; byte-fallback ``<0xNN>`` entries decode to less)."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


def max_prompt_chars(engine: AsyncEngine) -> int:
    """The most characters a prompt that fits the context can have: text of ``L`` characters
    has at least ``L / max_chars_per_token`` tokens."""
    return engine.max_model_len * _max_chars_per_token(engine.tokenizer)


def check_prompt_length(engine: AsyncEngine, text: str, param: str = "prompt") -> None:
    """Refuse, from its length alone, text that must be longer than the context
    (:func:`max_prompt_chars`), so nothing is tokenized to find out."""
    if len(text) > max_prompt_chars(engine):
        raise ParameterError(
            param,
            f"{param} has {len(text)} characters, so more tokens than the model's context "
            f"length of {engine.max_model_len} tokens",
        )


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
        check_text(prompt, param)
        check_prompt_length(engine, prompt, param)
        encoded = await text_pool(request).run(engine.tokenizer, prompt, add_special_tokens=special)
        return list(encoded.input_ids)
    return prompt


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
    """One engine request for one HTTP request: ``n`` samples of each prompt, its outputs
    pumped into a queue and recorded per choice (the engine does the fan-out and the seeds)."""

    def __init__(
        self,
        engine: AsyncEngine,
        prompts: list[list[int]],
        params: SamplingParams,
        adapter: AdapterSpec,
        id_prefix: str = "cmpl",
        n: int = 1,
        cache_salt: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.params, self.n, self.prompts = params, n, prompts
        self.created = int(time.time())
        self.choices = [Choice(i) for i in range(len(prompts) * n)]
        self._queue: asyncio.Queue[RequestOutput | Exception | None] = asyncio.Queue()
        self._done = False
        # Creating the engine stream runs nothing yet: it checks and queues on first iteration.
        stream = engine.generate(
            self.id, prompts, params, adapter, n=n, cache_salt=cache_salt, tenant=tenant
        )
        self._task = asyncio.create_task(self._pump(stream))

    def prompt_ids(self, choice: Choice) -> list[int]:
        """The token ids of the prompt ``choice`` answers."""
        return self.prompts[choice.index // self.n]

    async def _pump(self, stream: AsyncIterator[RequestOutput]) -> None:
        try:
            async for out in stream:
                self._queue.put_nowait(out)
        except Exception as exc:  # re-raised in the consumer, which knows how to report it
            self._queue.put_nowait(exc)
        else:
            self._queue.put_nowait(None)

    async def next(self) -> tuple[Choice, RequestOutput] | None:
        """The next output of any choice (recorded in it), or None when all are done."""
        if self._done:
            return None
        item = await self._queue.get()
        if item is None:
            self._done = True
            return None
        if isinstance(item, Exception):
            raise item
        choice = self.choices[item.index]
        choice.add(item)
        return choice, item

    def close(self) -> None:
        """Stop the stream; cancelling the pump closes its generator, so the engine aborts it."""
        self._task.cancel()

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
