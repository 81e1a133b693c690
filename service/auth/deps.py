"""Route dependencies: ``Authorization: Bearer <key>`` (or ``X-API-Key``) with a scope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header

from service.auth.service import ADMIN, SCOPES, Principal, authenticate
from service.deps import Ctx
from service.errors import Forbidden, Unauthorized

LOCAL = Principal("local", frozenset(SCOPES))


def _key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def require(*scopes: str) -> Callable[..., Principal]:
    """A dependency that admits keys holding any of ``scopes`` (any valid key when empty)."""

    def dependency(
        ctx: Ctx,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> Principal:
        if ctx.settings.auth_disabled:
            return LOCAL
        key = _key_from_headers(authorization, x_api_key)
        if not key:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        with ctx.sessions() as session:
            principal = authenticate(session, key)
        if principal is None:
            raise Unauthorized("invalid or revoked API key")
        if scopes and not principal.scopes.intersection(scopes):
            raise Forbidden(f"this API key lacks the '{' or '.join(scopes)}' scope")
        return principal

    return dependency


AnyKey = Annotated[Principal, Depends(require())]
TrainKey = Annotated[Principal, Depends(require("train"))]
PredictKey = Annotated[Principal, Depends(require("predict"))]
AdminKey = Annotated[Principal, Depends(require(ADMIN))]
