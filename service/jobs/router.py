from __future__ import annotations

from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse

from service.auth.deps import AnyKey, KeyStillValid, TrainKey
from service.context import AppContext
from service.db.tables import now
from service.deps import Ctx, Db, Page
from service.jobs import service, streams
from service.jobs.schemas import (
    CheckpointObject,
    EventObject,
    FineTuneRequest,
    JobObject,
)
from service.queue import TASK_FINETUNE, FinetunePayload
from service.schemas import ERROR_RESPONSES, ListResponse
from service.status import TERMINAL, JobStatus

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)
# How often a stream looks for new events while they come (less often once it goes quiet).


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
    db: Db, _: AnyKey, page: Page, status: JobStatus | None = None
) -> ListResponse[JobObject]:
    rows, more = service.list_jobs(db, page.after, page.limit, status)
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
    principal: AnyKey,
    key_valid: KeyStillValid,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    stream: bool = False,
    last_event_id: Annotated[str | None, Header(max_length=255)] = None,
) -> ListResponse[EventObject] | StreamingResponse:
    """Events oldest first. ``?stream=true``: server-sent events until the job finishes,
    resuming after ``Last-Event-ID`` when a client reconnects with it."""
    if stream:
        return _open_stream(ctx, principal.key_id, key_valid, job_id, after, last_event_id)
    # A session of its own rather than the request's: no connection outlives the read.
    with ctx.sessions() as db:
        service.get(db, job_id)
        cursor = service.parse_event_cursor(after)
        rows, more = service.events(db, job_id, cursor, limit)
        return ListResponse(data=[EventObject.of(r) for r in rows], has_more=more)


def _open_stream(
    ctx: AppContext,
    key: str,
    key_valid: streams.KeyCheck,
    job_id: str,
    after: str | None,
    last_event_id: str | None,
) -> StreamingResponse:
    with ctx.sessions() as db:
        service.get(db, job_id)
    # A browser's EventSource reconnects to the same URL with the last id it saw in this header.
    if last_event_id is not None:
        cursor = service.parse_event_cursor(last_event_id, "Last-Event-ID")
    else:
        cursor = service.parse_event_cursor(after)
    return streams.open_stream(ctx, key, partial(_poll, ctx, job_id), cursor, key_valid)


def _poll(ctx: AppContext, job_id: str, cursor: int) -> streams.Batch:
    with ctx.sessions() as session:
        # Status first: the worker commits its last events with the terminal status, so events
        # read afterwards include them. Read the other way round, a job finishing between the
        # two reads would end the stream without its final events.
        status = service.get(session, job_id).status
        rows, more = service.events(session, job_id, cursor, streams.STREAM_BATCH)
        return streams.Batch([EventObject.of(r) for r in rows], status, more)


@router.get("/jobs/{job_id}/checkpoints", response_model=ListResponse[CheckpointObject])
def list_checkpoints(job_id: str, db: Db, _: AnyKey) -> ListResponse[CheckpointObject]:
    """The checkpoints that can still be used: an unfinished job's last few (it resumes from
    them) and a succeeded job's final one, registered as ``fine_tuned_model_checkpoint``."""
    over = service.get(db, job_id).status in TERMINAL
    rows = [
        r
        for r in service.checkpoints(db, job_id)
        if r.files_deleted_at is None and (r.fine_tuned_model or not over)
    ]
    return ListResponse(data=[CheckpointObject.of(r) for r in rows])
