"""Evaluation state transitions, as conditional UPDATEs shared by the API and the worker.

The same rules as a job's (``service/jobs/state.py``): each transition names the states it may
leave, so a cancel, a worker finishing and a second delivery of the same task cannot move an
evaluation out of a terminal state or take it from a worker that still holds its lease, and
every write of a worker is fenced by its attempt, so a worker that lost the lease writes nothing.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import CursorResult, update
from sqlalchemy.orm import Session

from service.db.tables import Evaluation, EvaluationEvent, now
from service.errors import redact
from service.jobs.state import Attempt, fence, running, take
from service.status import ACTIVE, EvaluationStatus


def add_event(
    session: Session,
    evaluation_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    """Append an event (append-only, as a job's)."""
    session.add(
        EvaluationEvent(
            evaluation_id=evaluation_id, level=level, type=type, message=message, data=data
        )
    )


def _changed(result: Any) -> bool:
    return isinstance(result, CursorResult) and result.rowcount == 1


def _ours(evaluation_id: str, attempt: Attempt) -> Any:
    return running(Evaluation, evaluation_id, attempt)


def claim(session: Session, evaluation_id: str, owner: str, lease_s: float) -> Attempt | None:
    """Take a queued evaluation, or a running one whose lease ran out (its worker died)."""
    return take(session, Evaluation, evaluation_id, owner, lease_s)


def record(
    session: Session, evaluation_id: str, attempt: Attempt, message: str, **event: Any
) -> bool:
    """Append a worker's event (``event``: ``add_event``'s keywords) only while ``attempt``
    holds the evaluation (fenced as a job's are, ``service.jobs.state.hold``); the caller
    commits. False, and nothing added, for a stale attempt."""
    if not fence(session, Evaluation, evaluation_id, attempt):
        return False
    add_event(session, evaluation_id, message, **event)
    return True


def renew(
    session: Session,
    evaluation_id: str,
    attempt: Attempt,
    lease_s: float,
    done: int | None = None,
) -> bool:
    """Extend the lease (and record the splits done); False once it is no longer ours."""
    values: dict[str, Any] = {"lease_until": time.time() + lease_s}
    if done is not None:
        values["progress_step"] = done
    result = session.execute(
        update(Evaluation).where(_ours(evaluation_id, attempt)).values(**values)
    )
    session.commit()
    return _changed(result)


def finish(
    session: Session,
    evaluation_id: str,
    attempt: Attempt,
    status: EvaluationStatus,
    *,
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> bool:
    """Move our running evaluation to a terminal state, in the caller's transaction; False
    (nothing changed) if it is not ours."""
    result = session.execute(
        update(Evaluation)
        .where(_ours(evaluation_id, attempt))
        .values(status=status, finished_at=now(), error=error, lease_until=None, **(values or {}))
    )
    return _changed(result)


def release(session: Session, evaluation_id: str, attempt: Attempt) -> bool:
    """Hand a running evaluation back to the queue (the worker is stopping), in the caller's
    transaction; it starts over."""
    result = session.execute(
        update(Evaluation)
        .where(_ours(evaluation_id, attempt))
        .values(status=EvaluationStatus.QUEUED, lease_owner=None, lease_until=None)
    )
    return _changed(result)


def cancel(session: Session, evaluation_id: str) -> bool:
    """Cancel an evaluation that has not finished; the worker sees it between batches."""
    result = session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status.in_(ACTIVE))
        .values(status=EvaluationStatus.CANCELLED, finished_at=now())
    )
    changed = _changed(result)
    if changed:
        add_event(session, evaluation_id, "Evaluation cancelled")
    session.commit()
    return changed


def fail(session: Session, evaluation_id: str, code: str, message: str) -> None:
    """Fail an evaluation no worker holds (it could not be queued)."""
    message = redact(message)
    session.execute(
        update(Evaluation)
        .where(Evaluation.id == evaluation_id, Evaluation.status.in_(ACTIVE))
        .values(
            status=EvaluationStatus.FAILED,
            finished_at=now(),
            error={"code": code, "message": message},
        )
    )
    add_event(session, evaluation_id, message, level="error")
    session.commit()
