from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi.responses import StreamingResponse

from service.auth.deps import AnyKey, KeyStillValid, TrainKey
from service.context import AppContext
from service.db.tables import now
from service.deps import Ctx, Db, Page
from service.jobs import service
from service.jobs.schemas import (
    CheckpointObject,
    EventObject,
    FineTuneRequest,
    JobObject,
)
from service.queue import TASK_FINETUNE, FinetunePayload
from service.schemas import ERROR_RESPONSES, ListResponse
from service.status import TERMINAL, JobStatus
from service.tasks.create import Sender
from service.tasks.routes import Events, events_response, events_route, poll, sender
from service.tasks.streams import Batch

router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)


def _sender(ctx: AppContext) -> Sender:
    return sender(ctx, TASK_FINETUNE, lambda job_id: FinetunePayload(job_id=job_id))


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
        db, ctx.settings, body, _sender(ctx), principal.key_id, idempotency_key
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


@router.get("/jobs/{job_id}/events", **events_route(EventObject))
def list_events(
    job_id: str, ctx: Ctx, principal: AnyKey, key_valid: KeyStillValid, query: Events
) -> ListResponse[EventObject] | StreamingResponse:
    """Events oldest first. ``?stream=true``: server-sent events until the job finishes,
    resuming after ``Last-Event-ID`` when a client reconnects with it."""
    return events_response(ctx, service, EventObject, job_id, principal.key_id, key_valid, query)


def _poll(ctx: AppContext, job_id: str, cursor: int) -> Batch:
    # One poll of a job's stream, as the route's (a test replays a long history through it).
    return poll(ctx, service, EventObject, job_id, cursor)


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
