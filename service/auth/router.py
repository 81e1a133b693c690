"""``/keys``: list, create and revoke API keys with an ``admin`` key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.auth import service
from service.auth.deps import AdminKey
from service.auth.schemas import CreatedKey, KeyCreate, KeyObject
from service.deps import Ctx, Db
from service.schemas import ERROR_RESPONSES, ListResponse

router = APIRouter(tags=["keys"], responses=ERROR_RESPONSES)
KeyId = Annotated[str, Path(max_length=40)]


@router.get("/keys", response_model=ListResponse[KeyObject])
def list_keys(
    db: Db, _: AdminKey, include_revoked: Annotated[bool, Query()] = True
) -> ListResponse[KeyObject]:
    """Every key, oldest first: id, name, scopes, created and revoked times; no secret."""
    rows = service.list_keys(db, include_revoked)
    return ListResponse(data=[KeyObject.of(r) for r in rows])


@router.post("/keys", response_model=CreatedKey, status_code=201)
def create_key(body: KeyCreate, db: Db, _: AdminKey) -> CreatedKey:
    """A new key; the response holds the key itself, shown this once."""
    row, key = service.create_key(db, body.name, body.scopes)
    return CreatedKey(**KeyObject.of(row).model_dump(), key=key)


@router.delete("/keys/{key_id}", response_model=KeyObject)
def revoke_key(key_id: KeyId, ctx: Ctx, db: Db, _: AdminKey) -> KeyObject:
    """Revoke a key (revoking it again changes nothing). 409 for the last admin key.

    Answered once no API process accepts the key any more (``RCS_LOOKUP_CACHE_S`` after the
    change is stored)."""
    row = service.revoke_key(db, key_id)
    ctx.lookups.settle()
    return KeyObject.of(row)
