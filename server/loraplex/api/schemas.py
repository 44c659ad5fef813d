"""Pydantic models of the HTTP surface: ``/v1/completions``, ``/v1/models``, health, and what
the OpenAI routes share (chat, the TGI-style routes and adapter management have their own modules).

Request models check only types; value ranges are checked once, by :class:`SamplingParams`, whose
:class:`ParameterError` the error handlers turn into a 400 naming the parameter. The schema
documents those ranges (``doc``, :mod:`loraplex.api.schema_docs`). Rules across fields, which
JSON Schema cannot say, are in the fields' descriptions: a prompt's tokens plus ``max_tokens``
fit the context; prompts x ``n`` within ``--max-seqs-per-request``; ``adapters`` only with the
base model as ``model``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraplex.api.logprobs import CompletionLogprobs
from loraplex.api.schema_docs import doc
from loraplex.api.structured_schemas import StructuredFields
from loraplex.engine import (
    DOCUMENTED_SEED_MAX,
    MAX_LOGPROBS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_K,
    SEED_RANGE,
    ParameterError,
    SamplingParams,
)

MAX_MIX = 8  # most adapters in one per-request combination
# A mix weight's largest magnitude: task arithmetic uses weights near ±1 (negation included);
# past this a weight only serves to push activations to inf.
MAX_MIX_WEIGHT = 100.0
MAX_N = 64  # most choices per prompt
TokenId = Annotated[int, doc(minimum=0)]  # below the vocabulary size (/openapi.json says it)
Text = Annotated[str, doc(minLength=1)]
Prompt = Annotated[
    Text | list[Text] | list[TokenId] | list[Annotated[list[TokenId], doc(minItems=1)]],
    doc(minItems=1),
]
StopText = Annotated[str, doc(minLength=1, maxLength=MAX_STOP_CHARS)]
Stop = Annotated[StopText | list[StopText], doc(maxItems=MAX_STOP_STRINGS)]
Logprobs = Annotated[int, doc(minimum=0, maximum=MAX_LOGPROBS)]
# A mix weight: documented bounds only, checked by check_mix (a 400 naming the field).
MixWeight = Annotated[float, doc(minimum=-MAX_MIX_WEIGHT, maximum=MAX_MIX_WEIGHT)]


class AdapterWeight(BaseModel):
    """One entry of the ``adapters`` extension field: an adapter and its weight in the mix."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: MixWeight


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage of the request."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class LenientBody(BaseModel):
    """A request body that ignores unknown fields and reads an explicit null as "not set".

    Clients send extras we don't implement but shouldn't reject (OpenAI SDKs: ``best_of``,
    ``suffix``, ``logit_bias``...), and several send null for a field they leave unset (the TGI
    clients send every field): its default applies, and a required field that is null fails as
    missing, which is the right message.
    """

    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data


class SamplingRequest(LenientBody, StructuredFields):
    """The fields every OpenAI generating request shares (completions and chat), the
    constraints (``response_format``, ``structured_outputs``, ``guided_*``) included."""

    model: str = Field(description="The base model's id or an adapter's name (404 otherwise).")
    temperature: Annotated[float, doc(minimum=0, maximum=2)] = 1.0
    top_p: Annotated[float, doc(exclusiveMinimum=0, maximum=1)] = 1.0
    top_k: Annotated[int, doc(minimum=-1, maximum=MAX_TOP_K)] = 0
    seed: Annotated[int | None, doc(minimum=SEED_RANGE[0], maximum=DOCUMENTED_SEED_MAX)] = None
    n: Annotated[int, doc(minimum=1, maximum=MAX_N)] = Field(
        1, description="Choices per prompt; prompts x n at most --max-seqs-per-request."
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop | None = None
    stop_token_ids: Annotated[list[TokenId] | None, doc(maxItems=MAX_STOP_TOKEN_IDS)] = None
    presence_penalty: Annotated[float, doc(minimum=-2, maximum=2)] = 0.0
    frequency_penalty: Annotated[float, doc(minimum=-2, maximum=2)] = 0.0
    repetition_penalty: Annotated[float, doc(exclusiveMinimum=0)] = 1.0
    ignore_eos: bool = False
    user: str | None = None
    # Extension: a weighted combination of adapters, applied as one (``model`` names the base).
    adapters: Annotated[list[AdapterWeight] | None, doc(minItems=1, maxItems=MAX_MIX)] = Field(
        None, description="A weighted mix of adapters; model must then be the base model's id."
    )
    # Extension (vLLM's name): only requests with the same salt share prefix-cache blocks.
    cache_salt: Annotated[str | None, doc(minLength=1)] = None
    # Extension (vLLM's name): logprobs name tokens "token_id:N" (scoring clients map ids).
    return_tokens_as_token_ids: bool = False

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def adapter_mix(self, base_model: str) -> list[tuple[str, float]] | None:
        """``adapters`` as ``[(name, weight), ...]`` for the engine, or None when not given.

        Raises :class:`ParameterError` (param ``adapters``) unless ``model`` is the base model,
        there are 1..MAX_MIX entries and every weight is within ±MAX_MIX_WEIGHT. Names are checked
        by the route.
        """
        if self.adapters is None:
            return None
        if self.model != base_model:
            raise ParameterError(
                "adapters",
                f"with adapters, model must be the base model {base_model!r}, got {self.model!r}",
            )
        return check_mix([(entry.name, entry.weight) for entry in self.adapters], "adapters")

    def _params(
        self,
        max_tokens: int,
        logprobs: int | None = None,
        prompt_logprobs: int | None = None,
        scoring: bool = False,
    ) -> SamplingParams:
        """The engine's sampling parameters; raises :class:`ParameterError` for a bad value.
        ``scoring``: ``max_tokens`` may be 0 (the prompt is run and echoed, nothing generated)."""
        if max_tokens < (0 if scoring else 1):
            hint = "" if scoring else " (0 only with echo, to score the prompt)"
            raise ParameterError("max_tokens", f"max_tokens must be at least 1{hint}")
        if not 1 <= self.n <= MAX_N:
            raise ParameterError("n", f"n must be in [1, {MAX_N}]")
        if self.cache_salt is not None and not self.cache_salt:
            raise ParameterError("cache_salt", "cache_salt must be a non-empty string")
        stop = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=tuple(stop),
            stop_token_ids=tuple(self.stop_token_ids or ()),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            constraint=self.constraint(),
        )


def check_mix(mix: list[tuple[str, float]], param: str) -> list[tuple[str, float]]:
    """A weighted combination with 1..MAX_MIX entries and weights within ±MAX_MIX_WEIGHT
    (else ParameterError)."""
    if not 1 <= len(mix) <= MAX_MIX:
        raise ParameterError(param, f"{param} must list 1 to {MAX_MIX} entries, got {len(mix)}")
    for i, (_, weight) in enumerate(mix):
        if not (math.isfinite(weight) and abs(weight) <= MAX_MIX_WEIGHT):
            raise ParameterError(
                param,
                f"{param}[{i}] weight must be a finite number within ±{MAX_MIX_WEIGHT:g}, "
                f"got {weight}",
            )
    return mix


class CompletionRequest(SamplingRequest):
    """Body of ``POST /v1/completions``."""

    prompt: Prompt = Field(
        description="Text, texts, token ids or lists of token ids; its tokens plus max_tokens "
        "must fit the model's context."
    )
    max_tokens: Annotated[int, doc(minimum=1)] = 16  # and below the context (/openapi.json)
    echo: bool = False
    logprobs: Logprobs | None = None

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: one text or one token-id list per choice.

        Raises :class:`ParameterError` (param ``prompt``) for an empty prompt or an empty list.
        """
        prompt = self.prompt
        items: list[str | list[int]]
        if isinstance(prompt, str):
            items = [prompt]
        elif prompt and all(isinstance(p, int) for p in prompt):
            items = [list(prompt)]  # type: ignore[arg-type]
        else:
            items = list(prompt)  # type: ignore[arg-type]
        if not items or any(len(p) == 0 for p in items):
            raise ParameterError("prompt", "prompt must not be empty")
        return items

    def sampling_params(self) -> SamplingParams:
        """The engine's sampling parameters; raises :class:`ParameterError` for a bad value.
        ``echo`` with ``logprobs`` also scores the prompt (the engine's ``prompt_logprobs``)."""
        prompt_logprobs = self.logprobs if self.echo else None
        return self._params(self.max_tokens, self.logprobs, prompt_logprobs, scoring=self.echo)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # prompt tokens served from the prefix cache, as OpenAI reports


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


ChoiceT = TypeVar("ChoiceT", bound=BaseModel)


class _Envelope(BaseModel):
    """What every OpenAI completion object and stream chunk starts with; each concrete model
    fixes ``object``."""

    id: str
    object: str
    created: int
    model: str


class OpenAIResponse(_Envelope, Generic[ChoiceT]):
    """A whole completion (legacy or chat): its choices and usage."""

    choices: list[ChoiceT]
    usage: UsageInfo


class OpenAIChunk(_Envelope, Generic[ChoiceT]):
    """One SSE chunk; ``usage`` is set only on the last chunk when ``include_usage`` is on."""

    choices: list[ChoiceT] = Field(default_factory=list)
    usage: UsageInfo | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(OpenAIResponse[CompletionChoice]):
    object: Literal["text_completion"] = "text_completion"


class CompletionStreamResponse(OpenAIChunk[CompletionChoice]):
    object: Literal["text_completion"] = "text_completion"


class ModelCard(BaseModel):
    """One entry of ``/v1/models``: the base model (``parent`` null) or an adapter on it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "loraplex"
    parent: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy", "draining"]
