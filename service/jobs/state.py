"""Job state transitions, as conditional UPDATEs shared by the API and the worker.

Each transition names the states it may leave, so concurrent actors (a cancel from the API, a
worker finishing, a second delivery of the same task) cannot move a job out of a terminal state
or take it from a worker that still holds its lease.

Every write a worker makes is fenced by its ``Attempt``: a claim counts one more attempt, and a
write is conditional on the job still being at that attempt under that owner, checked by an
UPDATE that locks the job's row (PostgreSQL) or the database (SQLite) until the write commits.
A worker paused past its lease and resumed after another took the job over (a zombie) is then
refused, whatever it tries to write; a claim waits for a write in flight, so nothing the old
attempt wrote lands after the new one began.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from service.db.tables import Evaluation, Job, JobCheckpoint, JobEvent, now
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


@dataclass(frozen=True)
class Attempt:
    """One claim of a task: who holds it and the claim's number, the fencing token every write
    of that worker carries (a takeover counts a new attempt, so the old one's token is stale)."""

    owner: str
    number: int


# Jobs and evaluations are leased alike: the same columns, so the same fence for both.
Leased = type[Job] | type[Evaluation]


def held(table: Leased, task_id: str, attempt: Attempt) -> Any:
    """The row ``attempt`` still holds: nobody claimed it since, nor was it given back."""
    return (
        (table.id == task_id)
        & (table.attempts == attempt.number)
        & (table.lease_owner == attempt.owner)
    )


def running(table: Leased, task_id: str, attempt: Attempt) -> Any:
    return held(table, task_id, attempt) & (table.status == JobStatus.RUNNING)


def fence(session: Session, table: Leased, task_id: str, attempt: Attempt) -> bool:
    """True, with the row locked until the caller commits, while ``attempt`` holds it."""
    # A no-op UPDATE rather than a SELECT: it takes the row lock on PostgreSQL and SQLite's
    # write lock (pysqlite begins the transaction at the first write, not at a read).
    result = session.execute(
        update(table).where(held(table, task_id, attempt)).values(attempts=table.attempts)
    )
    return _changed(result)


def take(
    session: Session, table: Leased, task_id: str, owner: str, lease_s: float
) -> Attempt | None:
    """Claim a queued row, or a running one whose lease ran out (its worker died) or that
    ``owner`` itself held; the attempt taken, or None. Committed."""
    t = time.time()
    result = session.execute(
        update(table)
        .where(
            table.id == task_id,
            or_(
                table.status == JobStatus.QUEUED,
                (table.status == JobStatus.RUNNING)
                & ((table.lease_until < t) | (table.lease_owner == owner)),
            ),
        )
        .values(
            status=JobStatus.RUNNING,
            lease_owner=owner,
            lease_until=t + lease_s,
            attempts=table.attempts + 1,
        )
        .returning(table.attempts)
    )
    number = result.scalar_one_or_none()
    session.commit()
    return None if number is None else Attempt(owner, number)


def claim(session: Session, job_id: str, owner: str, lease_s: float) -> Attempt | None:
    """Take a queued job, or a running one whose lease ran out (its worker died)."""
    return take(session, Job, job_id, owner, lease_s)


def hold(session: Session, job_id: str, attempt: Attempt) -> bool:
    """The fence, in the caller's transaction: True, with the job's row locked until the caller
    commits, while ``attempt`` is still the job's latest claim; False once another attempt took
    it over or it went back to the queue. A job that ended under this attempt (cancelled,
    finished) is still held: its worker may say how it stopped and clear its scratch."""
    return fence(session, Job, job_id, attempt)


def record(session: Session, job_id: str, attempt: Attempt, message: str, **event: Any) -> bool:
    """Append a worker's event (``event``: ``add_event``'s keywords) only while ``attempt``
    holds the job (``hold``); the caller commits. False, and nothing added, for a stale one."""
    if not hold(session, job_id, attempt):
        return False
    add_event(session, job_id, message, **event)
    return True


def renew(
    session: Session,
    job_id: str,
    attempt: Attempt,
    lease_s: float,
    progress: tuple[int, int | None, float | None] | None = None,
    *,
    commit: bool = True,
) -> bool:
    """Extend the lease and record progress; False when the job is no longer ours to run. With
    ``commit=False`` the row stays locked for the caller's writes (the fence, as ``hold``)."""
    values: dict[str, Any] = {"lease_until": time.time() + lease_s}
    if progress is not None:
        step, total, eta_s = progress
        values.update(progress_step=step, progress_total=total)
        values["estimated_finish"] = None if eta_s is None else int(time.time() + eta_s)
    result = session.execute(update(Job).where(running(Job, job_id, attempt)).values(**values))
    if commit:
        session.commit()
    return _changed(result)


def finish(
    session: Session,
    job_id: str,
    attempt: Attempt,
    status: JobStatus,
    *,
    error: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
    commit: bool = True,
) -> bool:
    """Move our running job to a terminal state; False (nothing changed) if it is not ours."""
    result = session.execute(
        update(Job)
        .where(running(Job, job_id, attempt))
        .values(status=status, finished_at=now(), error=error, lease_until=None, **(values or {}))
    )
    if commit:
        session.commit()
    return _changed(result)


def release(session: Session, job_id: str, attempt: Attempt, *, commit: bool = True) -> bool:
    """Hand a running job back to the queue (the worker is shutting down; it will resume)."""
    result = session.execute(
        update(Job)
        .where(running(Job, job_id, attempt))
        .values(status=JobStatus.QUEUED, lease_owner=None, lease_until=None)
    )
    if commit:
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
