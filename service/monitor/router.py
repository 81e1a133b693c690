from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response

from service.auth.deps import AnyKey, PredictKey, TrainKey
from service.deps import Ctx, Db
from service.evaluations.schemas import EvaluationObject
from service.monitor import service
from service.monitor.schemas import FeedbackRequest, FeedbackResponse, MonitorObject, ProfileRequest
from service.queue import TASK_EVALUATE, EvaluatePayload
from service.registry import service as registry
from service.schemas import ERROR_RESPONSES, MAX_INT
from service.tasks.routes import sender

router = APIRouter(prefix="/models", tags=["monitoring"], responses=ERROR_RESPONSES)
Version = Annotated[int, Path(ge=1, le=MAX_INT)]


@router.get("/{name}/versions/{version}/monitor", response_model=MonitorObject)
def get_monitor(
    name: str,
    version: Version,
    ctx: Ctx,
    db: Db,
    _: AnyKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = service.HISTORY,
) -> MonitorObject:
    """Shift monitoring of the version's /predict traffic: its reference profile, the open
    window so far, the newest ``limit`` closed windows (drift score and p-value, estimated
    accuracy with its interval, head disagreement, measured top-1 where feedback labelled
    images), and the events where a threshold was crossed. 409 (saying how to make one)
    while the version has no profile."""
    row = registry.get_version(db, name, version)
    return service.view(db, ctx.settings, row, limit)


@router.post("/{name}/versions/{version}/monitor/profile", response_model=EvaluationObject)
def create_profile(
    name: str,
    version: Version,
    body: ProfileRequest,
    ctx: Ctx,
    db: Db,
    key: TrainKey,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> EvaluationObject:
    """Compute (or recompute) the version's reference profile on a worker: an evaluation of
    kind ``profile`` on a labelled ID split (default: the dataset it was trained on, its
    validation split). Monitoring starts once the profile is stored."""
    row = registry.get_version(db, name, version)
    send = sender(ctx, TASK_EVALUATE, lambda task_id: EvaluatePayload(evaluation_id=task_id))
    evaluation, created = service.create_profile(db, row, body, send, key.key_id, idempotency_key)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return EvaluationObject.of(evaluation)


@router.post("/{name}/versions/{version}/feedback", response_model=FeedbackResponse)
def post_feedback(
    name: str, version: Version, body: FeedbackRequest, ctx: Ctx, db: Db, _: PredictKey
) -> FeedbackResponse:
    """True labels for images the version served (by the ``sha256`` /predict answered): the
    measured top-1 of their windows, beside the estimate. 422 names an unknown image or a
    label that is not one of the model's classes; nothing is stored then."""
    row = registry.get_version(db, name, version)
    return service.feedback(db, ctx.settings, row, body)
