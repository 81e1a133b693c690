"""Route dependencies: ``Authorization: Bearer <key>`` (or ``X-API-Key``) with a scope.

The key is read through ``fastapi.security``, so the OpenAPI schema declares both schemes, every
protected operation references them, and ``/docs``' Authorize button sends the key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.auth.service import ADMIN, SCOPES, Principal, authenticate
from service.context import AppContext
from service.deps import Ctx
from service.errors import Forbidden, Unauthorized

LOCAL = Principal("local", frozenset(SCOPES))

# auto_error=False: a missing key gets our 401 body, not FastAPI's.
BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
HeaderKey = Annotated[str | None, Depends(API_KEY)]

# Each key-check dependency and the scopes it admits: how the error handlers find a route's key
# check, to run it before the body is judged (``check_key_first``).
KEY_CHECKS: dict[Callable[..., Awaitable[Principal]], tuple[str, ...]] = {}


def presented_key(
    bearer: HTTPAuthorizationCredentials | None, header_key: str | None
) -> str | None:
    if header_key:
        return header_key.strip()
    return bearer.credentials.strip() if bearer else None


def authorize(ctx: AppContext, key: str | None, scopes: Iterable[str]) -> Principal:
    """The key's principal if it holds any of ``scopes`` (any valid key when empty)."""
    principal = cached_principal(ctx, key, scopes)
    if principal is not None:
        return principal
    assert key  # cached_principal raised otherwise
    generation = ctx.lookups.generation
    with ctx.sessions() as session:
        principal = authenticate(session, key)
    if principal is None:
        raise Unauthorized("invalid or revoked API key")
    ctx.lookups.remember_principal(key, principal, generation)
    return _with_scope(principal, scopes)


def cached_principal(ctx: AppContext, key: str | None, scopes: Iterable[str]) -> Principal | None:
    """``authorize`` without the database: the principal when known, None when it must be read.

    Raises as ``authorize`` does for a missing key and for a known key without the scope.
    """
    if ctx.settings.auth_disabled:
        return LOCAL
    if not key:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    principal = ctx.lookups.principal(key)
    return None if principal is None else _with_scope(principal, scopes)


def _with_scope(principal: Principal, scopes: Iterable[str]) -> Principal:
    wanted = tuple(scopes)
    if wanted and not principal.scopes.intersection(wanted):
        raise Forbidden(f"this API key lacks the '{' or '.join(wanted)}' scope")
    return principal


def require(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that admits keys holding any of ``scopes`` (any valid key when empty).

    A key seen in the last ``lookup_cache_s`` is checked on the event loop; any other on a
    worker thread, with the database.
    """

    async def dependency(ctx: Ctx, bearer: Bearer, header_key: HeaderKey) -> Principal:
        key = presented_key(bearer, header_key)
        principal = cached_principal(ctx, key, scopes)
        if principal is not None:
            return principal
        return await run_in_threadpool(authorize, ctx, key, scopes)

    KEY_CHECKS[dependency] = scopes
    return dependency


def key_check(ctx: AppContext, key: str | None) -> Callable[[], Awaitable[bool]]:
    """Whether ``key`` is still accepted, asked again and again by a response that outlives
    its request (an event stream). Through the lookup cache the requests use: a key revoked
    through this process is seen at once, through another one within ``lookup_cache_s``; the
    database is read only once the cached entry has expired. Always true with
    ``RCS_AUTH_DISABLED``."""

    async def valid() -> bool:
        try:
            if cached_principal(ctx, key, ()) is None:
                await run_in_threadpool(authorize, ctx, key, ())
        except Unauthorized:
            return False
        return True

    return valid


async def _key_check(
    ctx: Ctx, bearer: Bearer, header_key: HeaderKey
) -> Callable[[], Awaitable[bool]]:
    return key_check(ctx, presented_key(bearer, header_key))


def _scopes_of(call: object) -> tuple[str, ...] | None:
    # By identity: a route's other dependencies need not be hashable.
    return next((scopes for check, scopes in KEY_CHECKS.items() if check is call), None)


async def check_key_first(request: Request) -> None:
    """Run the route's API-key check, if it has one; raises its 401/403.

    FastAPI parses a JSON body before it runs the route's dependencies, so without this a
    request without a key and with a malformed body would learn about its body (422) before
    being told it needs a key (401); every other validation error already comes after the key.
    """
    dependant = getattr(request.scope.get("route"), "dependant", None)
    for dependency in getattr(dependant, "dependencies", ()):
        scopes = _scopes_of(dependency.call)
        if scopes is not None:
            key = presented_key(await BEARER(request), await API_KEY(request))
            await run_in_threadpool(authorize, request.app.state.ctx, key, scopes)


AnyKey = Annotated[Principal, Depends(require())]
TrainKey = Annotated[Principal, Depends(require("train"))]
PredictKey = Annotated[Principal, Depends(require("predict"))]
AdminKey = Annotated[Principal, Depends(require(ADMIN))]
# The check of the request's own key, for a response that outlives it (after ``AnyKey``).
KeyStillValid = Annotated[Callable[[], Awaitable[bool]], Depends(_key_check)]
