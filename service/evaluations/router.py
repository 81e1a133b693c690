from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from service.auth.deps import AnyKey, KeyStillValid, TrainKey
from service.deps import Ctx, Db, Page
from service.evaluations import service
from service.evaluations.respond import created_evaluation, evaluation_object, evaluation_sender
from service.evaluations.schemas import (
    DiagnoseRequest,
    EvaluationEventObject,
    EvaluationObject,
    EvaluationRequest,
)
from service.registry import service as registry
from service.schemas import ERROR_RESPONSES, MAX_INT, ListResponse
from service.status import EvaluationStatus
from service.tasks.routes import Events, events_response, events_route

router = APIRouter(tags=["evaluations"], responses=ERROR_RESPONSES)
Version = Annotated[int, Path(ge=1, le=MAX_INT)]


@router.post("/evaluations", response_model=EvaluationObject)
def create_evaluation(
    body: EvaluationRequest,
    ctx: Ctx,
    db: Db,
    key: TrainKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> EvaluationObject:
    """Evaluate a registered version on a dataset's splits, on a worker: every head's metrics
    per split, as in the model card. Retrying with the same ``Idempotency-Key`` returns the
    same evaluation."""
    row, created = service.create(db, body, evaluation_sender(ctx), key.key_id, idempotency_key)
    return created_evaluation(row, created, key, response)


@router.post(
    "/descriptions/{set_ref:path}/diagnose", response_model=EvaluationObject, tags=["descriptions"]
)
def diagnose_descriptions(
    set_ref: str,
    body: DiagnoseRequest,
    ctx: Ctx,
    db: Db,
    key: TrainKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> EvaluationObject:
    """Before training: does the description set (``desc-...``, ``name`` or ``name/3``) let the
    frozen backbone recognise each class? An evaluation of kind ``descriptions``, run on a
    worker: per class, the concept head's top-1 on the split's images, the mean p_c of the true
    class and the class most often confused with; weak classes flagged."""
    row, created = service.create_diagnosis(
        db, ctx.settings, set_ref, body, evaluation_sender(ctx), key.key_id, idempotency_key
    )
    return created_evaluation(row, created, key, response)


@router.get("/evaluations", response_model=ListResponse[EvaluationObject])
def list_evaluations(
    db: Db,
    key: AnyKey,
    page: Page,
    model: Annotated[str | None, Query(max_length=300)] = None,
    dataset: Annotated[str | None, Query(max_length=40)] = None,
    status: EvaluationStatus | None = None,
) -> ListResponse[EvaluationObject]:
    """Newest first. ``model``: ``name/3`` that version's, ``name@alias`` those of the version
    the alias names, ``name`` those of every version (deleted versions' too)."""
    selected = service.model_filter(db, model) if model is not None else None
    rows, more = service.list_evaluations(
        db, page.after, page.limit, model=selected, dataset=dataset, status=status
    )
    return ListResponse(data=[evaluation_object(r, key) for r in rows], has_more=more)


@router.get(
    "/models/{name}/versions/{version}/evaluations",
    response_model=ListResponse[EvaluationObject],
)
def list_version_evaluations(
    name: str, version: Version, db: Db, key: AnyKey, page: Page
) -> ListResponse[EvaluationObject]:
    """A version's evaluations, newest first (``GET /evaluations?model=name/3`` also lists
    those of a version since deleted)."""
    stored = registry.get_version(db, name, version).name
    rows, more = service.list_evaluations(db, page.after, page.limit, model=(stored, version))
    return ListResponse(data=[evaluation_object(r, key) for r in rows], has_more=more)


@router.get("/evaluations/{evaluation_id}", response_model=EvaluationObject)
def get_evaluation(evaluation_id: str, db: Db, key: AnyKey) -> EvaluationObject:
    return evaluation_object(service.get(db, evaluation_id), key)


@router.post("/evaluations/{evaluation_id}/cancel", response_model=EvaluationObject)
def cancel_evaluation(evaluation_id: str, db: Db, key: TrainKey) -> EvaluationObject:
    """Cancel a queued or running evaluation; a running one stops at its next batch."""
    return evaluation_object(service.cancel(db, evaluation_id), key)


@router.get("/evaluations/{evaluation_id}/events", **events_route(EvaluationEventObject))
def list_events(
    evaluation_id: str, ctx: Ctx, principal: AnyKey, key_valid: KeyStillValid, query: Events
) -> ListResponse[EvaluationEventObject] | StreamingResponse:
    """Events oldest first; ``?stream=true``: server-sent events until the evaluation ends,
    resuming after ``Last-Event-ID``, within the same per-key and total caps as a job's."""
    shape = EvaluationEventObject
    return events_response(ctx, service, shape, evaluation_id, principal.key_id, key_valid, query)
