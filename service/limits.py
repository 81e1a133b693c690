"""Request body limits, enforced on the ASGI stream: 413 before a huge body is read.

Each route declares its limit (``@body_limit("max_upload_bytes")`` names the setting that
holds it); a route that declares none takes JSON bodies up to ``JSON_BODY_BYTES``. The
middleware finds the route the request will reach, as the router does, before any of the
body is read. A declared Content-Length over the limit is refused at once; a chunked body is
counted as it arrives and cut off when it passes the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http_errors import error_body
from service.settings import Settings

# The body limit of a route that declares none: its body is a small JSON object.
JSON_BODY_BYTES = 1024 * 1024
# The endpoint's attribute ``body_limit`` sets: the name of the setting with its limit.
_LIMIT_SETTING = "body_limit_setting"
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def body_limit(setting: str) -> Callable[[Endpoint], Endpoint]:
    """Declare the endpoint's body limit: the ``Settings`` field (in bytes) that holds it."""
    if setting not in Settings.model_fields:
        raise ValueError(f"body_limit: no setting {setting!r}")

    def declare(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _LIMIT_SETTING, setting)
        return endpoint

    return declare


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """``routes``: the app's routes, in the router's order (``service.app.ROUTERS``)."""

    def __init__(self, app: ASGIApp, settings: Settings, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.settings = settings
        self.routes = routes

    def limit_for(self, scope: Scope) -> int:
        """The body limit the route this request reaches declares."""
        setting = getattr(_endpoint(self.routes, scope), _LIMIT_SETTING, None)
        return JSON_BODY_BYTES if setting is None else int(getattr(self.settings, setting))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _reject(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _reject(scope, receive, send, limit)


def _endpoint(routes: Sequence[BaseRoute], scope: Scope) -> Any:
    """The endpoint of the route the router picks for this request: the first full match, else
    the first route whose path matches (the router answers 405 there), else None."""
    path_only = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return getattr(route, "endpoint", None)
        if match is Match.PARTIAL and path_only is None:
            path_only = route
    return getattr(path_only, "endpoint", None)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _reject(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    message = f"request body over the limit of {limit} bytes"
    await error_body(413, "payload_too_large", message, None)(scope, receive, send)
