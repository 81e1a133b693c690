from __future__ import annotations

from fastapi import APIRouter

from service.auth.deps import AnyKey, TrainKey
from service.deps import Db, Page
from service.descriptions import service
from service.descriptions.schemas import DescriptionSetCreate, DescriptionSetObject, normalise
from service.schemas import ERROR_RESPONSES, ListResponse

router = APIRouter(prefix="/descriptions", tags=["descriptions"], responses=ERROR_RESPONSES)


@router.post("", response_model=DescriptionSetObject)
def create_set(body: DescriptionSetCreate, db: Db, _: TrainKey) -> DescriptionSetObject:
    """Store a new version of the named description set."""
    return DescriptionSetObject.of(service.create(db, body.name, normalise(body.descriptions)))


@router.get("", response_model=ListResponse[DescriptionSetObject])
def list_sets(
    db: Db, _: AnyKey, page: Page, name: str | None = None
) -> ListResponse[DescriptionSetObject]:
    rows, more = service.list_all(db, name, page.after, page.limit)
    return ListResponse(data=[DescriptionSetObject.of(r) for r in rows], has_more=more)


@router.get("/{set_id}", response_model=DescriptionSetObject)
def get_set(set_id: str, db: Db, _: AnyKey) -> DescriptionSetObject:
    return DescriptionSetObject.of(service.get(db, set_id))
