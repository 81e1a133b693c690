"""The one mapping of errors to HTTP: the error body and ``install(app)``.

``install`` registers the handlers that turn the domain's errors (``service.errors``), the
core's, the database's and FastAPI's own into the one error shape. It sits beside the app,
apart from the exceptions, so the worker can raise and redact without importing FastAPI.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError as DatabaseValueError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from models.errors import BackboneError, ConfigError
from service.errors import CORE_ERRORS, ServiceError, clip, core_error, redact, trim_message
from service.settings import Settings

log = logging.getLogger(__name__)


def error_body(status: int, code: str, message: str, param: str | None) -> JSONResponse:
    """The one error shape; the message and param are trimmed, whoever built them."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {
        "code": code,
        "message": trim_message(message),
        "param": None if param is None else clip(param),
        "type": kind,
    }
    return JSONResponse({"error": body}, status)


HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


def hide_server_paths(request: Request, message: str) -> str:
    """Replace the server's own folders (uploads, checkpoints, the artifact cache and store)
    with their setting's name: they tell a client nothing it can use and map the server."""
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        return message
    settings: Settings = ctx.settings
    folders = {"RCS_WORK_DIR": str(settings.work_dir), "RCS_ARTIFACTS_URL": settings.artifacts_url}
    if settings.storage_url is not None:
        folders["RCS_STORAGE_URL"] = settings.storage_url
    for name, folder in folders.items():
        # The longer, absolute form first; a relative one only if it has a separator, so a
        # short folder name ("work") cannot replace an ordinary word of the message.
        for form in (_absolute(folder), folder):
            if "/" in form.strip("/"):
                message = message.replace(form, f"${name}")
    return message


def _absolute(folder: str) -> str:
    return str(Path(folder).resolve()) if "://" not in folder else folder


def _answer(
    request: Request, status: int, code: str, message: str, param: str | None
) -> JSONResponse:
    return error_body(status, code, hide_server_paths(request, message), param)


def _unreadable_body(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body (its generic 400 wraps the cause), or None."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None or isinstance(cause, StarletteHTTPException):
        return None
    if isinstance(cause, RecursionError):
        return "the body is not valid JSON: nested too deeply"
    if isinstance(cause, UnicodeError):
        return "the body is not valid JSON: not UTF-8 text"
    return "the body is not valid JSON"


def install(app: FastAPI, check_key_first: Callable[[Request], Awaitable[None]]) -> None:
    """Register every error handler on ``app``.

    ``check_key_first`` runs the route's key check (``service.auth.deps``): a request with a
    malformed body is told it needs a key (401/403) before it learns about its body (422).
    It is passed in because the auth package raises this module's errors.
    """

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        response = _answer(request, exc.status, exc.code, exc.message, exc.param)
        response.headers.update(exc.headers)
        return response

    async def key_refusal(request: Request) -> JSONResponse | None:
        """The answer to a request whose key the route refuses (401/403), checked before the
        body is judged; None when the key is fine."""
        try:
            await check_key_first(request)
        except ServiceError as refused:
            return await service_error(request, refused)
        except (OperationalError, InterfaceError) as down:
            return await database_unavailable(request, down)
        return None

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unreadable = _unreadable_body(exc)
        if unreadable is not None:
            # One status for a body that is not JSON, however it fails to parse.
            refused = await key_refusal(request)
            return refused or _answer(request, 422, "invalid_request", unreadable, None)
        # Unknown routes, wrong methods and the like, in our error shape rather than Starlette's.
        code = HTTP_CODES.get(exc.status_code, "http_error")
        response = _answer(request, exc.status_code, code, str(exc.detail), None)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            refused = await key_refusal(request)
            if refused is not None:
                return refused
        param, message = describe_validation(errors)
        return _answer(request, 422, "invalid_request", message, param)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client left before its body arrived, or the server ended the connection because
        # the body came too slowly (service/server.py, 408): nobody reads this answer, and it
        # is no server error.
        message = "the connection ended before the request body arrived"
        return error_body(400, "client_disconnected", message, None)

    async def core_error_answer(request: Request, exc: Exception) -> JSONResponse:
        status, code = core_error(exc) or (500, "server_error")
        return _answer(request, status, code, str(exc), _core_param(exc))

    for kind in CORE_ERRORS:
        app.add_exception_handler(kind, core_error_answer)

    @app.exception_handler(DatabaseValueError)
    async def unstorable_value(request: Request, exc: DatabaseValueError) -> JSONResponse:
        # A value the database refuses, such as a NUL character (PostgreSQL text cannot hold
        # one) in an id, a name or a cursor: the request's fault, so a 422 and never a 500.
        reason = str(exc.orig).split("\n", 1)[0]
        message = f"the request holds a value the database refuses: {reason}"
        return _answer(request, 422, "invalid_value", message, None)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_unavailable(_: Request, exc: DBAPIError) -> JSONResponse:
        # The database restarted, failed over or is unreachable: the client may retry, and the
        # pool's pre-ping replaces the dead connections, so the API recovers without a restart.
        log.warning("database unavailable: %s", redact(str(exc.orig)).split("\n", 1)[0])
        return _retry_shortly("database_unavailable", "the database is unavailable or busy")

    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection stayed busy for the pool's whole timeout: an overload the
        # client may retry, not a bug.
        log.warning("database connection pool exhausted")
        return _retry_shortly(
            "database_busy", "the database is busy: no connection was free in time"
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not a client's doing: logged with its traceback (Starlette re-raises it to the
        # server after this answer), and the client gets our shape without the details.
        log.error("unhandled %s", type(exc).__name__)
        return error_body(500, "server_error", "internal server error", None)


def _retry_shortly(code: str, reason: str) -> JSONResponse:
    response = error_body(503, code, f"{reason}; retry shortly", None)
    response.headers["Retry-After"] = "5"
    return response


def describe_validation(errors: Any) -> tuple[str | None, str]:
    """The first error as (dotted field, message), with the core's config key appended."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        # The location holds the character offset, not a field.
        reason = (first.get("ctx") or {}).get("error", "")
        offset = first["loc"][-1] if len(first.get("loc", ())) > 1 else "?"
        return None, f"the body is not valid JSON (at character {offset}): {reason}".rstrip(": ")
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return None, "a JSON request body is required"
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") in _NOT_AN_OBJECT:
        return None, "the body must be a JSON object (Content-Type: application/json)"
    parts = list(first.get("loc", ()))
    # Only the first part is the location: a body field may be called "path" or "query".
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    loc = [str(p) for p in parts if _is_field(p)]
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, ConfigError) and error.key:
        loc.append(error.key.split(".", 1)[-1])
    param = ".".join(loc) or None
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if param and first.get("type") == "missing":
        message = "field required"
    return param, f"{param}: {message}" if param else message


_LOCATIONS = {"body", "query", "header", "path"}
# A list, a string or raw bytes (another content type) where the route takes a JSON object.
_NOT_AN_OBJECT = {"model_attributes_type", "dict_type", "model_type"}
# Pydantic puts the union member it tried into the location ("int", "constrained-float", ...).
_TYPE_TAGS = {"int", "float", "str", "bool", "dict", "list", "none", "tuple"}


def _is_field(part: object) -> bool:
    if isinstance(part, int):
        return True
    text = str(part)
    return text not in _TYPE_TAGS and not re.search(r"[\[\]\-]", text)


def _core_param(exc: Exception) -> str | None:
    """The field a core error names: a config error's key, the model for a backbone."""
    if isinstance(exc, ConfigError):
        return exc.key
    return "model" if isinstance(exc, BackboneError) else None
