"""Adapter lifecycle: upload, load from a server folder, list, inspect, delete, merge, unmerge;
plus vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.

Every adapter that arrives is validated and stored by ``engine.adapters.register`` (which stores
atomically); an upload is received into a temp folder that is always removed.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterExistsError, AdapterNotFoundError
from loraplex.api.adapter_schemas import (
    AdapterCardResponse,
    AdapterDeleted,
    AdapterList,
    AdapterLocation,
    LoadAdapterRequest,
    RefusedAdapter,
    VLLMLoadRequest,
    VLLMUnloadRequest,
)
from loraplex.api.deps import AuthDep, EngineDep, LimitsDep
from loraplex.api.errors import APIError
from loraplex.api.upload import staged_upload
from loraplex.engine.async_engine import AsyncEngine

router = APIRouter(prefix="/v1", tags=["adapters"], dependencies=[AuthDep])

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def card_response(engine: AsyncEngine, card: AdapterCard) -> AdapterCardResponse:
    """The card and, while this version is still the registered one, where it is now."""
    location = None
    try:
        current, where = engine.adapters.card(card.name)
    except AdapterNotFoundError:  # deleted meanwhile
        pass
    else:
        if current.version == card.version:
            location = AdapterLocation.model_validate(where)
    return AdapterCardResponse(id=card.name, location=location, **card.to_dict())


def _flag(fields: dict[str, str], key: str) -> bool:
    value = fields.get(key, "").strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise APIError(400, f"{key} must be true or false, got {fields[key]!r}", param=key)


@router.get("/adapters", response_model=AdapterList)
async def list_adapters(engine: EngineDep) -> AdapterList:
    """Every registered adapter, by name; and those refused at start, with the reason."""
    refused = [RefusedAdapter(id=n, reason=r) for n, r in engine.adapters.refused().items()]
    cards = [card_response(engine, card) for card in engine.adapters.cards()]
    return AdapterList(data=cards, refused=refused)


@router.post("/adapters", status_code=201, response_model=AdapterCardResponse)
async def upload_adapter(
    request: Request, engine: EngineDep, limits: LimitsDep, replace: bool = False
) -> AdapterCardResponse:
    """Multipart upload: ``name`` and either ``config`` + ``weights`` or one ``archive``
    (zip or tar.gz); optional ``description``, ``pinned``, ``replace`` (also a query flag).

    An existing name is a 409 unless ``replace`` is true.
    """
    async with staged_upload(request, limits) as upload:
        fields = upload.fields
        name = fields.get("name")
        if name is None:
            raise APIError(400, "the form needs a name field", param="name")
        replace = replace or _flag(fields, "replace")
        # A pin holds a device slot for everyone: capped by --max-pinned-loras (409 past it).
        # Hook for roles: this is the one place a client asks for a pin; once keys carry roles,
        # refuse pinned=true here unless the caller is an admin.
        pinned = _flag(fields, "pinned")
        if not replace and engine.adapters.has(name):  # register checks again, atomically
            raise AdapterExistsError(f"adapter {name!r} exists; pass replace=true")
        card = await engine.adapters.register(
            name,
            upload.folder,
            replace=replace,
            description=fields.get("description") or None,
            pinned=pinned,
        )
    return card_response(engine, card)


@router.post("/adapters/load", status_code=201, response_model=AdapterCardResponse)
async def load_adapter(body: LoadAdapterRequest, engine: EngineDep) -> AdapterCardResponse:
    """Register a server-side adapter folder; it must lie under one of ``--adapter-roots``."""
    card = await engine.adapters.load_path(body.name, body.path, replace=body.replace)
    return card_response(engine, card)


@router.get("/adapters/{name}", response_model=AdapterCardResponse)
async def get_adapter(name: str, engine: EngineDep) -> AdapterCardResponse:
    """The card and where the adapter is now (device slot, host memory, store, merged)."""
    card, _ = engine.adapters.card(name)
    return card_response(engine, card)


@router.delete("/adapters/{name}", response_model=AdapterDeleted)
async def delete_adapter(name: str, engine: EngineDep) -> AdapterDeleted:
    """Requests already running on the adapter finish; new ones get 404."""
    await engine.adapters.remove(name)
    return AdapterDeleted(id=name)


@router.post("/adapters/{name}/merge", response_model=AdapterCardResponse)
async def merge_adapter(name: str, engine: EngineDep) -> AdapterCardResponse:
    """Merge the adapter into the base weights: a dedicated tenant without per-token cost."""
    return card_response(engine, await engine.adapters.merge(name))


@router.post("/adapters/{name}/unmerge", response_model=AdapterCardResponse)
async def unmerge_adapter(name: str, engine: EngineDep) -> AdapterCardResponse:
    """Restore the original base weights; the adapter is served dynamically again."""
    return card_response(engine, await engine.adapters.unmerge(name))


@router.post("/load_lora_adapter", response_class=PlainTextResponse)
async def vllm_load(body: VLLMLoadRequest, engine: EngineDep) -> PlainTextResponse:
    """vLLM-compatible alias of ``POST /v1/adapters/load``; answers in vLLM's plain text."""
    await engine.adapters.load_path(body.lora_name, body.lora_path, replace=body.load_inplace)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter", response_class=PlainTextResponse)
async def vllm_unload(body: VLLMUnloadRequest, engine: EngineDep) -> PlainTextResponse:
    """vLLM-compatible alias of ``DELETE /v1/adapters/{name}``."""
    await engine.adapters.remove(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
