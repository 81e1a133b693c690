from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from service.deps import Ctx
from service.health.service import readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up (it may not be ready)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready, with the failing checks"}})
async def readyz(ctx: Ctx) -> Any:
    ok, checks = await run_in_threadpool(readiness, ctx)
    return JSONResponse(
        {"status": "ready" if ok else "not_ready", "checks": checks}, 200 if ok else 503
    )


@router.get("/metrics", response_class=Response)
def metrics(ctx: Ctx) -> Response:
    ctx.metrics.cached_models.set(len(ctx.models))
    ctx.metrics.cached_bytes.set(ctx.models.nbytes)
    loaded = ctx.metrics.loaded_models
    loaded.clear()  # evicted models go
    for model in ctx.models.loaded():
        threads = str(model.pass_threads or "default")
        loaded.labels(model.name, str(model.version), model.engine, threads).set(1)
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
