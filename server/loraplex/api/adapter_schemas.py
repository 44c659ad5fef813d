"""Pydantic models of adapter management: ``/v1/adapters`` (upload, load, list, inspect, delete,
merge, unmerge) and vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from loraplex.adapters.rules import NAME_PATTERN
from loraplex.api.schema_docs import doc

AdapterName = Annotated[str, doc(pattern=NAME_PATTERN)]
FolderPath = Annotated[str, doc(pattern="^[^\\u0000]+$")]  # a folder under --adapter-roots


class AdapterLocation(BaseModel):
    """Where an adapter is now: its device slot (None if not resident), host memory, store;
    ``merged``: new requests run on a pre-merged copy; ``merged_bytes``: memory that copy holds
    (still non-zero after an unmerge while requests that started on it run)."""

    device_slot: int | None = None
    host_memory: bool = False
    store: bool = True
    merged: bool = False
    merged_bytes: int = 0
    pinned: bool = False


class AdapterCardResponse(BaseModel):
    """One adapter: its card (``version`` is the sha256 of its weights) and, where known, where
    it is now. ``id`` is the name the caller uses (``tenant/name`` for another tenant's, which
    only an admin sees); ``name`` is the bare name."""

    id: str
    object: Literal["adapter"] = "adapter"
    name: str
    owner: str | None = None  # the owning tenant; None: public (everyone may use it)
    public: bool = True
    version: str
    rank: int
    alpha: float
    target_modules: list[str]
    target_parameters: list[str] = []  # MoE expert tensors / routers (PEFT ``target_parameters``)
    size_bytes: int
    created: int
    description: str | None = None
    pinned: bool = False
    # The served base's weight format its shapes were checked against (bitsandbytes-nf4,
    # float32 ...): every adapter of a server is checked against its one base.
    base_format: str | None = None
    location: AdapterLocation | None = None


class RefusedAdapter(BaseModel):
    """An adapter found at start (the store, ``--lora-modules``) that could not be taken:
    ``reason`` says why and which option to change."""

    id: str
    object: Literal["adapter"] = "adapter"
    status: Literal["refused"] = "refused"
    reason: str


class AdapterList(BaseModel):
    """``data``: the servable adapters; ``refused``: those that could not be taken at start."""

    object: Literal["list"] = "list"
    data: list[AdapterCardResponse]
    refused: list[RefusedAdapter] = []


class AdapterDeleted(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    deleted: bool = True


def plain_path(path: str) -> str:
    """A server-side path with no NUL byte and no lone surrogate (neither names a file)."""
    if "\0" in path:
        raise ValueError("the path holds a NUL byte")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the path holds a lone surrogate") from None
    return path


class LoadAdapterRequest(BaseModel):
    """``POST /v1/adapters/load``: register a server-side folder (under ``--adapter-roots``)."""

    model_config = ConfigDict(extra="forbid")

    name: AdapterName
    path: FolderPath
    replace: bool = False

    @field_validator("path")
    @classmethod
    def _plain_path(cls, path: str) -> str:
        return plain_path(path)


class VLLMLoadRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter`` body (``load_inplace`` replaces an existing one)."""

    model_config = ConfigDict(extra="ignore")

    lora_name: AdapterName
    lora_path: FolderPath
    load_inplace: bool = False

    @field_validator("lora_path")
    @classmethod
    def _plain_path(cls, path: str) -> str:
        return plain_path(path)


class VLLMUnloadRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter`` body (``lora_int_id`` is accepted and unused)."""

    model_config = ConfigDict(extra="ignore")

    lora_name: str


# POST /v1/adapters reads its multipart body itself (staged_upload): its schema, written out.
UPLOAD_FORM = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "oneOf": [{"required": ["config", "weights"]}, {"required": ["archive"]}],
                "properties": {
                    "name": {"type": "string", "pattern": NAME_PATTERN},
                    "config": {"type": "string", "format": "binary"},
                    "weights": {"type": "string", "format": "binary"},
                    "archive": {"type": "string", "format": "binary"},
                    "description": {"type": "string"},
                    "pinned": {"type": "string", "enum": ["true", "false"]},
                    "replace": {"type": "string", "enum": ["true", "false"]},
                },
                "description": "adapter_config.json as config and adapter_model.safetensors as "
                "weights, or both in one zip or tar.gz archive; they must be a PEFT LoRA of "
                "this base model within --max-lora-rank (else 400 saying why).",
            }
        }
    },
}
