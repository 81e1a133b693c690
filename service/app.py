"""The FastAPI app: ``create_app(settings)``; the lifespan opens what requests share."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from celery import Celery
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError as DatabaseValueError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import ArtifactError, BackboneError, ConfigError, DataError
from service.auth.deps import require
from service.auth.me import router as me_router
from service.auth.router import router as keys_router
from service.auth.service import ensure_bootstrap_key
from service.context import AppContext
from service.datasets.router import router as datasets_router
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.descriptions.router import router as descriptions_router
from service.docs import install_docs
from service.errors import ServiceError, clip, redact, trim_message
from service.health.router import router as health_router
from service.jobs.router import router as jobs_router
from service.limits import BodySizeLimit
from service.observability import Metrics, RecordMetrics
from service.predict import service as predict_service
from service.predict.batcher import Batcher
from service.predict.cache import ModelCache
from service.predict.router import router as predict_router
from service.registry.router import router as registry_router
from service.settings import Settings, settings_from_env
from service.storage import ArtifactStore
from service.ui.router import router as ui_router
from worker.contracts import celery_config

log = logging.getLogger(__name__)


def build_context(settings: Settings) -> AppContext:
    if settings.auto_migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    if settings.bootstrap_api_key:
        with sessions() as session:
            ensure_bootstrap_key(session, settings.bootstrap_api_key)
    broker = Celery("rcs-api", set_as_current=False)
    broker.conf.update(celery_config(settings.broker_url, settings.visibility_timeout_s))
    metrics = Metrics()
    return AppContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=ArtifactStore(settings.artifacts_url, settings.artifact_cache_dir),
        broker=broker,
        models=ModelCache(settings.model_cache_bytes, _device(settings.device)),
        metrics=metrics,
        batcher=Batcher(
            predict_service.forward,
            max_batch=settings.predict_max_batch,
            max_wait_s=settings.predict_max_wait_ms / 1000,
            max_queue=settings.predict_max_queue,
            decode_threads=settings.predict_decode_threads,
            on_batch=metrics.observe_batch,
        ),
    )


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_default_model(ctx: AppContext) -> None:
    """Load and warm the default model; readiness waits for this."""
    ref = ctx.settings.default_model
    if ref is None:
        return
    try:
        with ctx.sessions() as session:
            predict_service.model_for(ctx, session, ref)
        ctx.default_model_ready = True
        log.info("default model %s loaded and warmed up", ref)
    except Exception as exc:  # reported by /readyz; the API still serves everything else
        ctx.default_model_error = f"{type(exc).__name__}: {exc}"
        log.warning("default model %s failed to load: %s", ref, exc)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)
        ctx = build_context(settings)
        app.state.ctx = ctx
        app.state.metrics = ctx.metrics
        loader = threading.Thread(target=load_default_model, args=(ctx,), daemon=True)
        loader.start()
        try:
            yield
        finally:
            ctx.batcher.close()
            ctx.engine.dispose()
            ctx.broker.close()

    app = FastAPI(
        title="Robust CLIP fine-tuning service",
        version="0.1.0",
        summary="Fine-tune CLIP-style zero-shot classifiers with DRM/FLYP/WiSE-FT and serve them",
        lifespan=lifespan,
        # FastAPI's pages load their assets from a CDN; install_docs serves them from here.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    for router in (
        jobs_router,
        datasets_router,
        descriptions_router,
        registry_router,
        predict_router,
        health_router,
        keys_router,
        me_router,
        ui_router,
    ):
        app.include_router(router)
    _install_error_handlers(app)
    # The size limit wraps the app directly, so nothing reads a body before it counts it; the
    # metrics wrap both, so refused requests (413) are counted too.
    app.add_middleware(BodySizeLimit, limit_for=_limits(settings))
    app.add_middleware(RecordMetrics)
    return app


def _limits(settings: Settings) -> Any:
    def limit_for(path: str) -> int | None:
        if path == "/predict":
            return settings.max_predict_bytes
        if path == "/datasets/upload":
            return settings.max_upload_bytes
        return 1024 * 1024  # JSON bodies of every other route

    return limit_for


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


async def _check_key_first(request: Request) -> None:
    """Run the route's API-key check, if it has one.

    FastAPI parses a JSON body before it runs the route's dependencies, so without this a
    request without a key and with a malformed body would learn about its body (422) before
    being told it needs a key (401); every other validation error already comes after the key.
    """
    dependant = getattr(request.scope.get("route"), "dependant", None)
    for dependency in getattr(dependant, "dependencies", ()):
        if getattr(dependency.call, "__qualname__", None) == _KEY_CHECK:
            await run_in_threadpool(
                dependency.call,
                request.app.state.ctx,
                request.headers.get("authorization"),
                request.headers.get("x-api-key"),
            )


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


_KEY_CHECK = require().__qualname__


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        response = _answer(request, exc.status, exc.code, exc.message, exc.param)
        response.headers.update(exc.headers)
        return response

    async def key_refusal(request: Request) -> JSONResponse | None:
        """The answer to a request whose key the route refuses (401/403), checked before the
        body is judged; None when the key is fine."""
        try:
            await _check_key_first(request)
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

    @app.exception_handler(ConfigError)
    async def config_error(request: Request, exc: ConfigError) -> JSONResponse:
        return _answer(request, 422, "invalid_config", str(exc), exc.key)

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> JSONResponse:
        return _answer(request, 422, "invalid_data", str(exc), None)

    @app.exception_handler(BackboneError)
    async def backbone_error(request: Request, exc: BackboneError) -> JSONResponse:
        return _answer(request, 422, "invalid_model", str(exc), "model")

    @app.exception_handler(ArtifactError)
    async def artifact_error(request: Request, exc: ArtifactError) -> JSONResponse:
        # A stored artifact that cannot be read: the model is unavailable, not the request wrong.
        return _answer(request, 503, "model_unavailable", str(exc), None)

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
        message = "the database is unavailable or busy; retry shortly"
        response = error_body(503, "database_unavailable", message, None)
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(PoolTimeout)
    async def pool_exhausted(_: Request, exc: PoolTimeout) -> JSONResponse:
        # Every pooled connection stayed busy for the pool's whole timeout: an overload the
        # client may retry, not a bug.
        log.warning("database connection pool exhausted")
        message = "the database is busy: no connection was free in time; retry shortly"
        response = error_body(503, "database_busy", message, None)
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # A bug, not a client's doing: logged with its traceback (Starlette re-raises it to the
        # server after this answer), and the client gets our shape without the details.
        log.error("unhandled %s", type(exc).__name__)
        return error_body(500, "server_error", "internal server error", None)


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


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory service.app:app_from_env``: settings from RCS_* variables."""
    return create_app(settings_from_env())
