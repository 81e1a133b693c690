"""How the evaluation routes (and the routes that create evaluations in other domains: the
description scores) send an evaluation to the workers and show one to a key."""

from __future__ import annotations

from fastapi import Response

from service.auth.service import Principal
from service.context import AppContext
from service.db.tables import Evaluation
from service.evaluations.schemas import EvaluationError, EvaluationObject
from service.queue import TASK_EVALUATE, EvaluatePayload
from service.tasks.create import Sender
from service.tasks.routes import sender
from service.visibility import paths_hidden_in, sees_server_paths


def evaluation_sender(ctx: AppContext) -> Sender:
    return sender(ctx, TASK_EVALUATE, lambda task_id: EvaluatePayload(evaluation_id=task_id))


def evaluation_object(row: Evaluation, key: Principal) -> EvaluationObject:
    """The evaluation as ``key`` may see it: a worker's error can quote a server folder."""
    obj = EvaluationObject.of(row)
    if obj.error is None or sees_server_paths(key):
        return obj
    error = EvaluationError(
        **{**obj.error.model_dump(), "message": paths_hidden_in(obj.error.message)}
    )
    return obj.model_copy(update={"error": error})


def created_evaluation(
    row: Evaluation, created: bool, key: Principal, response: Response
) -> EvaluationObject:
    if not created:  # an earlier request with the same Idempotency-Key
        response.headers["Idempotent-Replayed"] = "true"
    return evaluation_object(row, key)
