"""Job state transitions, as conditional UPDATEs shared by the API and the worker.

Each transition names the states it may leave, so concurrent actors (a cancel from the API, a
worker finishing, a second delivery of the same task) cannot move a job out of a terminal state
or take it from a worker that still holds its lease.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from service.db.tables import Job, JobCheckpoint, JobEvent, now
from service.errors import redact
from service.status import ACTIVE, JobStatus


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    """Append an event (append-only: events are never updated or deleted one by one)."""
    session.add(JobEvent(job_id=job_id, level=level, type=type, message=message, data=data))


def _changed(result: Any) -> bool:
    return isinstance(result, CursorResult) and result.rowcount == 1


def claim(session: Session, job_id: str, owner: str, lease_s: float) -> bool:
    """Take a queued job, or a running one whose lease ran out (its worker died)."""
    t = time.time()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == JobStatus.QUEUED,
                (Job.status == JobStatus.RUNNING)
                & ((Job.lease_until < t) | (Job.lease_owner == owner)),
            ),
        )
        .values(
            status=JobStatus.RUNNING,
            lease_owner=owner,
            lease_until=t + lease_s,
            attempts=Job.attempts + 1,
        )
    )
    session.commit()
    return _changed(result)


def renew(
    session: Session,
    job_id: str,
    owner: str,
    lease_s: float,
    progress: tuple[int, int | None, float | None] | None = None,
) -> bool:
    """Extend the lease and record progress; False when the job is no longer ours to run."""
    values: dict[str, Any] = {"lease_until": time.time() + lease_s}
    if progress is not None:
        step, total, eta_s = progress
        values.update(progress_step=step, progress_total=total)
        values["estimated_finish"] = None if eta_s is None else int(time.time() + eta_s)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
        .values(**values)
    )
    session.commit()
    return _changed(result)


def finish(
    session: Session,
    job_id: str,
    owner: str,
    status: JobStatus,
    *,
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    commit: bool = True,
) -> bool:
    """Move our running job to a terminal state; False (nothing changed) if it is not ours."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
        .values(status=status, finished_at=now(), error=error, lease_until=None, **(values or {}))
    )
    if commit:
        session.commit()
    return _changed(result)


def release(session: Session, job_id: str, owner: str) -> bool:
    """Hand a running job back to the queue (the worker is shutting down; it will resume)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
        .values(status=JobStatus.QUEUED, lease_owner=None, lease_until=None)
    )
    session.commit()
    return _changed(result)


def cancel(session: Session, job_id: str) -> bool:
    """Cancel a job that has not finished; the worker sees it between steps and stops."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE))
        .values(status=JobStatus.CANCELLED, finished_at=now(), estimated_finish=None)
    )
    changed = _changed(result)
    if changed:
        add_event(session, job_id, "Job cancelled")
    session.commit()
    return changed


def fail(session: Session, job_id: str, code: str, message: str) -> None:
    """Fail a job no worker holds (it could not be queued)."""
    message = redact(message)
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE))
        .values(
            status=JobStatus.FAILED, finished_at=now(), error={"code": code, "message": message}
        )
    )
    add_event(session, job_id, message, level="error")
    session.commit()


def add_checkpoint(session: Session, job_id: str, step: int, metrics: dict[str, Any]) -> None:
    exists = session.scalar(
        select(JobCheckpoint.seq).where(
            JobCheckpoint.job_id == job_id, JobCheckpoint.step_number == step
        )
    )
    if exists is None:
        session.add(JobCheckpoint(job_id=job_id, step_number=step, metrics=metrics))
