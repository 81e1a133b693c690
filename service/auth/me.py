"""``GET /me``: who the calling key is, so a client (the dashboard) shows only what it may do."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from service.auth.deps import AnyKey
from service.db.tables import ApiKey
from service.deps import Ctx, Db
from service.schemas import ERROR_RESPONSES

router = APIRouter(tags=["auth"], responses=ERROR_RESPONSES)


class MeObject(BaseModel):
    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    scopes: list[str]
    # False only with RCS_AUTH_DISABLED (allowed in RCS_ENV=local): every request has every scope.
    auth_enabled: bool


@router.get("/me", response_model=MeObject)
def who_am_i(principal: AnyKey, ctx: Ctx, db: Db) -> MeObject:
    """The calling key's id, name and scopes (never the key or its hash), and whether
    authentication is on. Needs a key like every other route, unless authentication is off."""
    if ctx.settings.auth_disabled:
        name = "local (authentication disabled)"
    else:
        row = db.get(ApiKey, principal.key_id)
        name = row.name if row is not None else principal.key_id
    return MeObject(
        id=principal.key_id,
        name=name,
        scopes=sorted(principal.scopes),
        auth_enabled=not ctx.settings.auth_disabled,
    )
