from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.auth.deps import AnyKey, TrainKey
from service.context import AppContext
from service.db.tables import now
from service.deps import Ctx, Db
from service.jobs import service, state
from service.jobs.schemas import (
    CheckpointObject,
    EventObject,
    FineTuneRequest,
    JobObject,
    Status,
)
from service.schemas import ERROR_RESPONSES, ListResponse
from worker.contracts import TASK_FINETUNE, FinetunePayload

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)
STREAM_POLL_S = 0.5
STREAM_HEARTBEAT_S = 15.0


def sender(ctx: AppContext) -> service.Sender:
    def send(job_id: str) -> None:
        payload = FinetunePayload(job_id=job_id).model_dump()
        ctx.broker.send_task(
            TASK_FINETUNE,
            kwargs={"payload": payload},
            queue=ctx.settings.training_queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    return send


@router.post("/finetune", response_model=JobObject)
def create_job(
    body: FineTuneRequest,
    ctx: Ctx,
    db: Db,
    principal: TrainKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobObject:
    """Create a fine-tuning job. Retrying with the same ``Idempotency-Key`` returns the same job."""
    job, created = service.create(
        db, ctx.settings, body, sender(ctx), principal.key_id, idempotency_key
    )
    if created:
        ctx.metrics.jobs_created.inc()
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobObject.of(job, now())


@router.get("/jobs", response_model=ListResponse[JobObject])
def list_jobs(
    db: Db,
    _: AnyKey,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    status: Status | None = None,
) -> ListResponse[JobObject]:
    rows, more = service.list_jobs(db, after, limit, status)
    t = now()
    return ListResponse(data=[JobObject.of(r, t) for r in rows], has_more=more)


@router.get("/jobs/{job_id}", response_model=JobObject)
def get_job(job_id: str, db: Db, _: AnyKey) -> JobObject:
    return JobObject.of(service.get(db, job_id), now())


@router.post("/jobs/{job_id}/cancel", response_model=JobObject)
def cancel_job(job_id: str, db: Db, _: TrainKey) -> JobObject:
    """Cancel a queued or running job; a running one stops at its next training step."""
    return JobObject.of(service.cancel(db, job_id), now())


@router.get(
    "/jobs/{job_id}/events",
    response_model=ListResponse[EventObject],
    responses={200: {"content": {"text/event-stream": {}}}},
)
def list_events(
    job_id: str,
    ctx: Ctx,
    db: Db,
    _: AnyKey,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    stream: bool = False,
) -> ListResponse[EventObject] | StreamingResponse:
    """Events oldest first. ``?stream=true``: server-sent events until the job finishes."""
    service.get(db, job_id)
    cursor = service.parse_event_cursor(after)
    if stream:
        return StreamingResponse(
            _event_stream(ctx, job_id, cursor),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    rows, more = service.events(db, job_id, cursor, limit)
    return ListResponse(data=[EventObject.of(r) for r in rows], has_more=more)


def _poll(ctx: AppContext, job_id: str, cursor: int) -> tuple[list[EventObject], str]:
    with ctx.sessions() as session:
        # Status first: the worker commits its last events with the terminal status, so events
        # read afterwards include them. Read the other way round, a job finishing between the
        # two reads would end the stream without its final events.
        status = service.get(session, job_id).status
        rows, _ = service.events(session, job_id, cursor, 500)
        return [EventObject.of(r) for r in rows], status


async def _event_stream(ctx: AppContext, job_id: str, cursor: int) -> AsyncIterator[str]:
    idle = 0.0
    while True:
        events, status = await run_in_threadpool(_poll, ctx, job_id, cursor)
        for event in events:
            cursor = int(event.id.removeprefix("ftevent-"))
            yield f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"
        if not events and status in state.TERMINAL:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        idle = 0.0 if events else idle + STREAM_POLL_S
        if idle >= STREAM_HEARTBEAT_S:  # a comment line keeps proxies from closing the stream
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(STREAM_POLL_S)


@router.get("/jobs/{job_id}/checkpoints", response_model=ListResponse[CheckpointObject])
def list_checkpoints(job_id: str, db: Db, _: AnyKey) -> ListResponse[CheckpointObject]:
    service.get(db, job_id)
    rows = service.checkpoints(db, job_id)
    return ListResponse(data=[CheckpointObject.of(r) for r in rows])
