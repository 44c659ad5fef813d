"""``GET /v1/models``: the base model first, then one card per registered adapter."""

from __future__ import annotations

from fastapi import APIRouter

from loraplex.api.deps import AuthDep, EngineDep
from loraplex.api.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[AuthDep])


@router.get("/models", response_model=ModelList)
async def list_models(engine: EngineDep) -> ModelList:
    """OpenAI's model list; an adapter's ``parent`` (and every card's ``root``) is the base id."""
    base = engine.model_name
    cards = [ModelCard(id=base, created=engine.created, parent=None, root=base)]
    cards += [
        ModelCard(id=name, created=engine.created, parent=base, root=base)
        for name in engine.adapters.names()
    ]
    return ModelList(data=cards)
