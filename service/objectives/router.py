from __future__ import annotations

from fastapi import APIRouter

from models.objective_registry import DEFAULT_OBJECTIVE
from models.objectives import catalog
from service.auth.deps import AnyKey
from service.objectives.schemas import ObjectiveList, ObjectiveObject
from service.schemas import ERROR_RESPONSES

router = APIRouter(tags=["objectives"], responses=ERROR_RESPONSES)


@router.get("/objectives", response_model=ObjectiveList)
def list_objectives(_: AnyKey) -> ObjectiveList:
    """The objectives ``method.type`` accepts, in the registry's order: what each needs, and
    the ``method.objective`` knobs it reads with their defaults and accepted values."""
    data = [ObjectiveObject(**o) for o in catalog()]
    return ObjectiveList(data=data, default=DEFAULT_OBJECTIVE)
