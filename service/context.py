"""What the app's lifespan builds once and every request shares."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from service.storage import ArtifactStore
from service.tasks.streams import StreamSlots

if TYPE_CHECKING:
    from celery import Celery

    from service.lookups import Lookups
    from service.monitor.live import Monitor
    from service.observability import Metrics
    from service.predict.batcher import Batcher
    from service.predict.cache import ModelCache


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ArtifactStore
    broker: Celery
    models: ModelCache
    metrics: Metrics
    batcher: Batcher
    lookups: Lookups
    monitor: Monitor
    # Set once the default model is loaded and has answered one forward pass.
    default_model_ready: bool = False
    default_model_error: str | None = None
    # Open server-sent event streams, per API key and in all (capped by the settings).
    streams: StreamSlots = field(default_factory=StreamSlots)


async def get_ctx(request: Request) -> AppContext:
    # async: FastAPI would run a plain function on a worker thread, a hop per request for a read.
    ctx: AppContext = request.app.state.ctx
    return ctx


def session_scope(ctx: AppContext) -> Iterator[Session]:
    with ctx.sessions() as session:
        yield session
