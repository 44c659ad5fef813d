"""Pydantic models of the native TGI/LoRAX-style routes, ``POST /generate`` and
``/generate_stream``.

Field names, defaults and response shapes follow Hugging Face TGI (and LoRAX's adapter fields),
so their clients (``text_generation``, ``lorax``) work unchanged. Errors use the project's one
(OpenAI) error shape instead of TGI's.
"""

from __future__ import annotations

import random
from typing import Annotated

from pydantic import BaseModel, Field

from loraplex.api.schema_docs import doc
from loraplex.api.schemas import (
    MAX_MIX,
    LenientBody,
    Logprobs,
    MixWeight,
    StopText,
    Text,
    check_mix,
)
from loraplex.api.structured_schemas import GrammarParameter, grammar_parameter_spec
from loraplex.engine import (
    DOCUMENTED_SEED_MAX,
    MAX_STOP_STRINGS,
    MAX_TOP_K,
    SEED_RANGE,
    ParameterError,
    SamplingParams,
    check_logprobs,
)


class MergedAdapters(LenientBody):
    """LoRAX's per-request merge; only ``linear`` (``Σ w_i·ΔW_i``, applied as one adapter)."""

    ids: Annotated[list[str], doc(minItems=1, maxItems=MAX_MIX)]
    weights: list[MixWeight] = Field(description="One weight per id.")
    merge_strategy: Annotated[str, doc(enum=["linear"])] = "linear"
    density: float = 1.0  # LoRAX's TIES/DARE option: unused by linear
    majority_sign_method: str = "total"  # likewise

    def mix(self) -> list[tuple[str, float]]:
        param = "merged_adapters"
        if self.merge_strategy != "linear":
            raise ParameterError(
                param, f"merge_strategy {self.merge_strategy!r} is not supported, only 'linear'"
            )
        if len(self.ids) != len(self.weights):
            raise ParameterError(
                param, f"{len(self.ids)} ids but {len(self.weights)} weights; give one per id"
            )
        return check_mix(list(zip(self.ids, self.weights, strict=True)), param)


class GenerateParameters(LenientBody):
    """``parameters`` of a generate request. Like TGI, the request samples when ``do_sample``
    is true or any of ``temperature`` (other than 1), ``top_k``, ``top_p`` (below 1) is set, and
    is greedy otherwise. Stop sequences are cut from the text, as on the OpenAI routes."""

    adapter_id: str | None = Field(None, description="Not together with merged_adapters.")
    adapter_source: str | None = None
    merged_adapters: MergedAdapters | None = None
    max_new_tokens: Annotated[int, doc(minimum=1)] = Field(
        20, description="Its tokens plus the prompt's must fit the model's context."
    )
    temperature: Annotated[float | None, doc(minimum=0, maximum=2)] = None
    top_p: Annotated[float | None, doc(exclusiveMinimum=0, maximum=1)] = None
    top_k: Annotated[int | None, doc(minimum=-1, maximum=MAX_TOP_K)] = None
    seed: Annotated[int | None, doc(minimum=SEED_RANGE[0], maximum=DOCUMENTED_SEED_MAX)] = None
    repetition_penalty: Annotated[float, doc(exclusiveMinimum=0)] = 1.0
    frequency_penalty: Annotated[float, doc(minimum=-2, maximum=2)] = 0.0
    stop: Annotated[list[StopText], doc(maxItems=MAX_STOP_STRINGS)] = Field(default_factory=list)
    do_sample: bool = False
    details: bool = False
    return_full_text: bool = False
    best_of: Annotated[int | None, doc(enum=[1])] = None
    decoder_input_details: bool = False
    top_n_tokens: Logprobs | None = None
    grammar: GrammarParameter | None = Field(
        None, description='TGI\'s: {"type": "json", "value": schema} or {"type": "regex", ...}'
    )

    @property
    def sampling(self) -> bool:
        return (
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or bool(self.top_k)
            or (self.top_p is not None and self.top_p < 1.0)
        )

    def sampling_params(self) -> SamplingParams:
        """Raises :class:`ParameterError` for a bad value or an unsupported option. A sampled
        request that asks for ``details`` without a ``seed`` gets one, so details can say it."""
        if self.best_of is not None and self.best_of != 1:
            raise ParameterError("best_of", "only best_of=1 is supported")
        check_logprobs(self.top_n_tokens, "top_n_tokens")
        if self.max_new_tokens < 1:
            raise ParameterError("max_tokens", "max_new_tokens must be at least 1")
        seed = self.seed
        if self.sampling and seed is None and self.details:
            seed = random.getrandbits(63)
        return SamplingParams(
            max_tokens=self.max_new_tokens,
            temperature=(1.0 if self.temperature is None else self.temperature)
            if self.sampling
            else 0.0,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            seed=seed,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=tuple(self.stop),
            logprobs=self.top_n_tokens or 0,  # every token carries its logprob, as in TGI
            prompt_logprobs=0 if self.decoder_input_details and self.details else None,
            constraint=grammar_parameter_spec(self.grammar),
        )

    def adapter_mix(self) -> list[tuple[str, float]] | None:
        if self.merged_adapters is None:
            return None
        if self.adapter_id:
            raise ParameterError("adapter_id", "give adapter_id or merged_adapters, not both")
        return self.merged_adapters.mix()


class GenerateRequest(LenientBody):
    """Body of ``POST /generate`` and ``/generate_stream``."""

    inputs: Text = Field(description="Its tokens plus max_new_tokens must fit the context.")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False


class Token(BaseModel):
    id: int
    text: str
    logprob: float | None = None
    special: bool = False


class StreamDetails(BaseModel):
    """``finish_reason`` is ``length``, ``eos_token`` or ``stop_sequence``; ``seed`` is the
    seed a sampled request used (None when greedy or unseeded)."""

    finish_reason: str
    generated_tokens: int
    seed: int | None = None
    input_length: int


class Details(StreamDetails):
    prefill: list[Token] = Field(default_factory=list)  # with decoder_input_details
    tokens: list[Token] = Field(default_factory=list)
    top_tokens: list[list[Token]] = Field(default_factory=list)  # with top_n_tokens


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamResponse(BaseModel):
    """One SSE event per generated token; the last one carries the text and the details."""

    index: int
    token: Token
    top_tokens: list[Token] = Field(default_factory=list)  # with top_n_tokens
    generated_text: str | None = None
    details: StreamDetails | None = None
