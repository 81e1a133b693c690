"""An evaluation's state transitions: the leased-task rules (``service.tasks.lease``) bound to
the evaluations table. A worker's finish and release join the caller's transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db.tables import Evaluation, EvaluationEvent
from service.tasks.lease import Attempt, Tasks

EVALUATIONS = Tasks(Evaluation, EvaluationEvent, "evaluation_id", "Evaluation", commits=False)
add_event, claim, hold, record = (
    EVALUATIONS.add_event,
    EVALUATIONS.claim,
    EVALUATIONS.hold,
    EVALUATIONS.record,
)
finish, release, cancel, fail = (
    EVALUATIONS.finish,
    EVALUATIONS.release,
    EVALUATIONS.cancel,
    EVALUATIONS.fail,
)


def renew(
    session: Session, evaluation_id: str, attempt: Attempt, lease_s: float, done: int | None = None
) -> bool:
    """Extend the lease (and record the splits done); False once it is no longer ours."""
    progress = None if done is None else {"progress_step": done}
    return EVALUATIONS.renew(session, evaluation_id, attempt, lease_s, progress)
