"""The FastAPI app: ``create_app(settings)``; the lifespan opens what requests share."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from celery import Celery
from fastapi import FastAPI

from models._version import __version__
from models.backbone import resolve_device
from service import http_errors
from service.auth.deps import check_key_first
from service.auth.me import router as me_router
from service.auth.router import router as keys_router
from service.auth.service import apply_bootstrap_setting
from service.context import AppContext
from service.datasets.router import router as datasets_router
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.descriptions.router import router as descriptions_router
from service.docs import install_docs
from service.evaluations.router import router as evaluations_router
from service.health.router import router as health_router
from service.inference.errors import ProtocolErrorBodies
from service.inference.router import router as inference_router
from service.jobs.router import router as jobs_router
from service.limits import BodySizeLimit
from service.lookups import Lookups
from service.monitor.live import Monitor
from service.monitor.router import router as monitor_router
from service.objectives.router import router as objectives_router
from service.observability import Metrics, RecordMetrics
from service.predict import service as predict_service
from service.predict.batcher import Batcher
from service.predict.cache import Engine, ModelCache
from service.predict.router import router as predict_router
from service.queue import celery_config
from service.registry.router import router as registry_router
from service.settings import Settings, settings_from_env
from service.storage import ArtifactStore
from service.ui.router import router as ui_router

log = logging.getLogger(__name__)
# In the order the app matches them; each route declares its body limit (service/limits.py).
ROUTERS = (
    jobs_router,
    objectives_router,
    evaluations_router,
    datasets_router,
    descriptions_router,
    monitor_router,
    registry_router,
    predict_router,
    inference_router,
    health_router,
    keys_router,
    me_router,
    ui_router,
)


def build_context(settings: Settings) -> AppContext:
    if settings.auto_migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    lookups = Lookups(settings.lookup_cache_s)
    lookups.watch(sessions)
    with sessions() as session:
        apply_bootstrap_setting(session, settings.bootstrap_api_key)
    broker = Celery("rcs-api", set_as_current=False)
    broker.conf.update(celery_config(settings.broker_url, settings.visibility_timeout_s))
    metrics = Metrics()
    return AppContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=ArtifactStore.of(settings),
        broker=broker,
        models=ModelCache(
            settings.model_cache_bytes,
            str(resolve_device(settings.device)),
            Engine(
                settings.predict_engine,
                settings.onnx_dir,
                settings.torch_threads,
                tuple(sorted(settings.predict_engine_by_model.items())),
            ),
        ),
        metrics=metrics,
        batcher=Batcher(
            predict_service.forward,
            max_batch=settings.predict_max_batch,
            max_wait_s=settings.predict_max_wait_ms / 1000,
            max_queue=settings.predict_max_queue,
            decode_threads=settings.predict_decode_threads,
            on_batch=metrics.observe_batch,
        ),
        lookups=lookups,
        monitor=Monitor.start(settings, sessions, metrics.registry),
    )


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
            ctx.monitor.close()
            ctx.engine.dispose()
            ctx.broker.close()

    app = FastAPI(
        title="Robust CLIP fine-tuning service",
        version=__version__,
        summary="Fine-tune CLIP-style zero-shot classifiers with DRM/FLYP/WiSE-FT and serve them",
        lifespan=lifespan,
        # FastAPI's pages load their assets from a CDN; install_docs serves them from here.
        docs_url=None,
        redoc_url=None,
    )
    install_docs(app)
    for router in ROUTERS:
        app.include_router(router)
    http_errors.install(app, check_key_first)
    # The size limit wraps the app directly, so nothing reads a body before it counts it; the
    # metrics wrap both, so refused requests (413) are counted too.
    routes = [route for router in ROUTERS for route in router.routes]
    app.add_middleware(BodySizeLimit, settings=settings, routes=routes)
    # The Open Inference Protocol's routes answer errors in its own body, whoever wrote them.
    app.add_middleware(ProtocolErrorBodies)
    app.add_middleware(RecordMetrics)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory service.app:app_from_env``: settings from RCS_* variables."""
    return create_app(settings_from_env())
