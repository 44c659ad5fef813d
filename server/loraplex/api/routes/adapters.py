"""Adapter lifecycle: upload, load from a server folder, list, inspect, delete, merge, unmerge;
plus vLLM's ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``.

Who may call which route, and which names a caller sees, is ``api/auth.py``'s: every handler
turns the name it was given into a qualified one through the caller's :class:`Principal`.

Every adapter that arrives is validated and stored by ``engine.adapters.register`` (which stores
atomically); an upload is received into a temp folder that is always removed.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from loraplex.adapters.card import AdapterCard
from loraplex.adapters.errors import AdapterExistsError, AdapterNotFoundError
from loraplex.api.adapter_schemas import (
    UPLOAD_FORM,
    AdapterCardResponse,
    AdapterDeleted,
    AdapterList,
    AdapterLocation,
    LoadAdapterRequest,
    RefusedAdapter,
    VLLMLoadRequest,
    VLLMUnloadRequest,
)
from loraplex.api.auth import LOAD_PATH, MANAGE, MERGE, PIN, Principal, PrincipalDep, allow
from loraplex.api.deps import AuthDep, EngineDep, LimitsDep
from loraplex.api.errors import APIError
from loraplex.api.generation import visible_adapter
from loraplex.api.upload import staged_upload
from loraplex.engine import AsyncEngine

router = APIRouter(prefix="/v1", tags=["adapters"], dependencies=[AuthDep])

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


def card_response(engine: AsyncEngine, card: AdapterCard, shown: str) -> AdapterCardResponse:
    """The card under the name the caller knows it by (``shown``) and, while this version is
    still the registered one, where it is now."""
    location = None
    try:
        current, where = engine.adapters.card(card.name)
    except AdapterNotFoundError:  # deleted meanwhile
        pass
    else:
        if current.version == card.version:
            location = AdapterLocation.model_validate(where)
    return AdapterCardResponse(
        id=shown, location=location, base_format=engine.base_format, **card.to_dict()
    )


def _flag(fields: dict[str, str], key: str) -> bool:
    value = fields.get(key, "").strip().lower()
    if value in _TRUE or value in _FALSE:
        return value in _TRUE
    raise APIError(400, f"{key} must be true or false, got {fields[key]!r}", param=key)


def _visible(engine: AsyncEngine, principal: Principal, name: str) -> str:
    """The qualified name of an adapter the caller sees; another tenant's is this same 404, its
    own refused at start a 400 saying why."""
    card = visible_adapter(engine, principal, name)
    if card is None:
        raise AdapterNotFoundError(name)
    return card.name


def _new(engine: AsyncEngine, principal: Principal, name: str, public: bool, replace: bool) -> str:
    """Where an upload or load of ``name`` goes; 409 if it exists and ``replace`` is false."""
    qualified = principal.new_adapter(name, public, engine.adapters.has)
    if engine.adapters.has(qualified) and not replace:  # register checks again, atomically
        raise AdapterExistsError(f"adapter {name!r} exists; pass replace=true")
    return qualified


@router.get("/adapters", response_model=AdapterList, dependencies=[allow(MANAGE)])
async def list_adapters(engine: EngineDep, principal: PrincipalDep) -> AdapterList:
    """The adapters the caller sees: its tenant's and the public ones (an admin: all, another
    tenant's as ``tenant/name``)."""
    visible = principal.visible(engine.adapters.cards())
    shown = principal.visible_refused(engine.adapters.refused())
    refused = [RefusedAdapter(id=name, reason=reason) for name, reason in shown]
    cards = [card_response(engine, card, shown) for shown, card in visible]
    return AdapterList(data=cards, refused=refused)


@router.post(
    "/adapters",
    status_code=201,
    response_model=AdapterCardResponse,
    dependencies=[allow(MANAGE)],
    openapi_extra={"requestBody": UPLOAD_FORM},
)
async def upload_adapter(
    request: Request,
    engine: EngineDep,
    limits: LimitsDep,
    principal: PrincipalDep,
    replace: bool = False,
) -> AdapterCardResponse:
    """Multipart upload: ``name`` and either ``config`` + ``weights`` or one ``archive``
    (zip or tar.gz); optional ``description``, ``pinned``, ``public``, ``replace`` (also a
    query flag).

    The adapter is the caller's tenant's; ``public=true`` (admins) makes it everyone's, and an
    admin may name ``tenant/name``. An existing name is a 409 unless ``replace`` is true, and so
    is the name of a public adapter for a tenant's own.
    """
    async with staged_upload(request, limits) as upload:
        fields = upload.fields
        name = fields.get("name")
        if name is None:
            raise APIError(400, "the form needs a name field", param="name")
        replace = replace or _flag(fields, "replace")
        # A pin holds a device slot for everyone: admins only, capped by --max-pinned-loras.
        pinned = _flag(fields, "pinned")
        if pinned:
            principal.require(PIN)
        qualified = _new(engine, principal, name, _flag(fields, "public"), replace)
        if upload.archive is not None:
            await engine.adapters.unpack(upload.archive, upload.folder)
        card = await engine.adapters.register(
            qualified,
            upload.folder,
            replace=replace,
            description=fields.get("description") or None,
            pinned=pinned,
        )
    return card_response(engine, card, principal.display_name(card))


@router.post(
    "/adapters/load",
    status_code=201,
    response_model=AdapterCardResponse,
    dependencies=[allow(LOAD_PATH)],
)
async def load_adapter(
    body: LoadAdapterRequest, engine: EngineDep, principal: PrincipalDep
) -> AdapterCardResponse:
    """Register a server-side adapter folder; it must lie under one of ``--adapter-roots``.
    Admins only; public under a plain name, a tenant's as ``tenant/name``."""
    public = "/" not in body.name
    qualified = _new(engine, principal, body.name, public, body.replace)
    card = await engine.adapters.load_path(qualified, body.path, replace=body.replace)
    return card_response(engine, card, principal.display_name(card))


@router.get(
    "/adapters/{name:path}", response_model=AdapterCardResponse, dependencies=[allow(MANAGE)]
)
async def get_adapter(name: str, engine: EngineDep, principal: PrincipalDep) -> AdapterCardResponse:
    """The card and where the adapter is now (device slot, host memory, store, merged)."""
    card, _ = engine.adapters.card(_visible(engine, principal, name))
    return card_response(engine, card, principal.display_name(card))


@router.delete("/adapters/{name:path}", response_model=AdapterDeleted, dependencies=[allow(MANAGE)])
async def delete_adapter(name: str, engine: EngineDep, principal: PrincipalDep) -> AdapterDeleted:
    """Requests already running on the adapter finish; new ones get 404. A public adapter is
    an admin's to delete (403)."""
    qualified = _visible(engine, principal, name)
    principal.check_writable(qualified)
    await engine.adapters.remove(qualified)
    return AdapterDeleted(id=name)


@router.post(
    "/adapters/{name:path}/merge", response_model=AdapterCardResponse, dependencies=[allow(MERGE)]
)
async def merge_adapter(
    name: str, engine: EngineDep, principal: PrincipalDep
) -> AdapterCardResponse:
    """Merge the adapter into the base weights: a pre-merged copy, without per-token cost."""
    card = await engine.adapters.merge(_visible(engine, principal, name))
    return card_response(engine, card, principal.display_name(card))


@router.post(
    "/adapters/{name:path}/unmerge",
    response_model=AdapterCardResponse,
    dependencies=[allow(MERGE)],
)
async def unmerge_adapter(
    name: str, engine: EngineDep, principal: PrincipalDep
) -> AdapterCardResponse:
    """Restore the original base weights; the adapter is served dynamically again."""
    card = await engine.adapters.unmerge(_visible(engine, principal, name))
    return card_response(engine, card, principal.display_name(card))


@router.post(
    "/load_lora_adapter", response_class=PlainTextResponse, dependencies=[allow(LOAD_PATH)]
)
async def vllm_load(
    body: VLLMLoadRequest, engine: EngineDep, principal: PrincipalDep
) -> PlainTextResponse:
    """vLLM-compatible alias of ``POST /v1/adapters/load``; answers in vLLM's plain text."""
    public = "/" not in body.lora_name
    qualified = _new(engine, principal, body.lora_name, public, body.load_inplace)
    await engine.adapters.load_path(qualified, body.lora_path, replace=body.load_inplace)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/unload_lora_adapter", response_class=PlainTextResponse, dependencies=[allow(MANAGE)])
async def vllm_unload(
    body: VLLMUnloadRequest, engine: EngineDep, principal: PrincipalDep
) -> PlainTextResponse:
    """vLLM-compatible alias of ``DELETE /v1/adapters/{name}``."""
    qualified = _visible(engine, principal, body.lora_name)
    principal.check_writable(qualified)
    await engine.adapters.remove(qualified)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
