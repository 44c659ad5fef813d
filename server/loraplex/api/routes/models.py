"""``GET /v1/models``: the base model first, then one card per registered adapter."""

from __future__ import annotations

from fastapi import APIRouter

from loraplex.api.auth import GENERATE, PrincipalDep, allow
from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[AuthDep, allow(GENERATE)])


@router.get("/models", response_model=ModelList)
async def list_models(engine: EngineDep, principal: PrincipalDep) -> ModelList:
    """OpenAI's model list; an adapter's ``parent`` (and every card's ``root``) is the base id.
    The caller's own adapters and the public ones (an admin's: every tenant's, as
    ``tenant/name``); another tenant's adapters are not there."""
    base = engine.model_name
    cards = [ModelCard(id=base, created=engine.created, parent=None, root=base)]
    cards += [
        ModelCard(id=name, created=engine.created, parent=base, root=base)
        for name, _ in principal.visible(engine.adapters.cards())
    ]
    return ModelList(data=cards)
