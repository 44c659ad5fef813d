"""Pydantic models of the HTTP surface: ``/v1/completions``, ``/v1/models``, adapters, health
(chat and the TGI-style routes have their own modules).

Request models check only types; value ranges are checked once, by :class:`SamplingParams`, whose
:class:`ParameterError` the error handlers turn into a 400 naming the parameter.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from loraplex.engine.sampling_params import ParameterError, SamplingParams

Prompt = str | list[str] | list[int] | list[list[int]]
MAX_MIX = 8  # most adapters in one per-request combination


class AdapterWeight(BaseModel):
    """One entry of the ``adapters`` extension field: an adapter and its weight in the mix."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage of the request."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """The fields every OpenAI generating request shares (completions and chat).

    Unknown fields are ignored: OpenAI clients and SDKs send extras (``best_of``, ``suffix``,
    ``logit_bias``...) that we don't implement but shouldn't reject.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    user: str | None = None
    # Extension: a weighted combination of adapters, applied as one (``model`` names the base).
    adapters: list[AdapterWeight] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        # Several clients send explicit nulls for "not set"; treat them as absent so defaults apply
        # (a null ``model`` then fails as missing, which is the right message).
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def adapter_mix(self, base_model: str) -> list[tuple[str, float]] | None:
        """``adapters`` as ``[(name, weight), ...]`` for the engine, or None when not given.

        Raises :class:`ParameterError` (param ``adapters``) unless ``model`` is the base model,
        there are 1..MAX_MIX entries and every weight is finite. Names are checked by the route.
        """
        if self.adapters is None:
            return None
        if self.model != base_model:
            raise ParameterError(
                "adapters",
                f"with adapters, model must be the base model {base_model!r}, got {self.model!r}",
            )
        return check_mix([(entry.name, entry.weight) for entry in self.adapters], "adapters")

    def _params(self, max_tokens: int) -> SamplingParams:
        """The engine's sampling parameters; raises :class:`ParameterError` for a bad value."""
        if self.n != 1:
            raise ParameterError("n", "only n=1 is supported")
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
        )


def check_mix(mix: list[tuple[str, float]], param: str) -> list[tuple[str, float]]:
    """A weighted combination with 1..MAX_MIX entries and finite weights (else ParameterError)."""
    if not 1 <= len(mix) <= MAX_MIX:
        raise ParameterError(param, f"{param} must list 1 to {MAX_MIX} entries, got {len(mix)}")
    for i, (_, weight) in enumerate(mix):
        if not math.isfinite(weight):
            raise ParameterError(param, f"{param}[{i}] weight must be finite, got {weight}")
    return mix


class CompletionRequest(SamplingRequest):
    """Body of ``POST /v1/completions``."""

    prompt: Prompt
    max_tokens: int = 16
    echo: bool = False
    logprobs: int | None = None

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
        """The engine's sampling parameters; raises :class:`ParameterError` for a bad value or an
        option we don't support (``n`` > 1, ``echo``, ``logprobs``)."""
        if self.n != 1:
            raise ParameterError("n", "only n=1 is supported; send several prompts instead")
        if self.echo:
            raise ParameterError("echo", "echo is not supported")
        if self.logprobs is not None:
            raise ParameterError("logprobs", "logprobs are not supported")
        return self._params(self.max_tokens)


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None = None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class CompletionStreamResponse(BaseModel):
    """One SSE chunk; ``usage`` is set only on the last chunk when ``include_usage`` is on."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice] = Field(default_factory=list)
    usage: UsageInfo | None = None


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


class AdapterLocation(BaseModel):
    """Where an adapter is now: its device slot (None if not resident), host memory, store."""

    device_slot: int | None = None
    host_memory: bool = False
    store: bool = True
    merged: bool = False
    pinned: bool = False


class AdapterCardResponse(BaseModel):
    """One adapter: its card (``version`` is the sha256 of its weights) and, where known, where
    it is now."""

    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    version: str
    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    created: int
    description: str | None = None
    pinned: bool = False
    location: AdapterLocation | None = None


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterCardResponse]


class AdapterDeleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool = True


class LoadAdapterRequest(BaseModel):
    """``POST /v1/adapters/load``: register a server-side folder (under ``--adapter-roots``)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    replace: bool = False


class VLLMLoadRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter`` body (``load_inplace`` replaces an existing one)."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str
    lora_path: str
    load_inplace: bool = False


class VLLMUnloadRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter`` body (``lora_int_id`` is accepted and unused)."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str


class HealthResponse(BaseModel):
    status: Literal["ok", "unhealthy"]
