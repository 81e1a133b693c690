"""A job's state transitions: the leased-task rules (``service.tasks.lease``) bound to the jobs
table, plus what only a job has (progress with a finish estimate, checkpoints)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import Job, JobCheckpoint, JobEvent
from service.tasks.lease import Attempt, Tasks, fence, held, running, take

__all__ = ["Attempt", "fence", "held", "running", "take"]

JOBS = Tasks(Job, JobEvent, "job_id", "Job", cancel_values={"estimated_finish": None})
add_event, claim, hold, record = JOBS.add_event, JOBS.claim, JOBS.hold, JOBS.record
finish, release, cancel, fail = JOBS.finish, JOBS.release, JOBS.cancel, JOBS.fail


def renew(
    session: Session,
    job_id: str,
    attempt: Attempt,
    lease_s: float,
    progress: tuple[int, int | None, float | None] | None = None,
    *,
    commit: bool = True,
) -> bool:
    """Extend the lease and record progress (step, total, seconds left); False when the job is
    no longer ours to run. With ``commit=False`` the row stays locked for the caller's writes."""
    values: dict[str, Any] = {}
    if progress is not None:
        step, total, eta_s = progress
        values.update(progress_step=step, progress_total=total)
        values["estimated_finish"] = None if eta_s is None else int(time.time() + eta_s)
    return JOBS.renew(session, job_id, attempt, lease_s, values, commit=commit)


def add_checkpoint(session: Session, job_id: str, step: int, metrics: dict[str, Any]) -> None:
    exists = session.scalar(
        select(JobCheckpoint.seq).where(
            JobCheckpoint.job_id == job_id, JobCheckpoint.step_number == step
        )
    )
    if exists is None:
        session.add(JobCheckpoint(job_id=job_id, step_number=step, metrics=metrics))
