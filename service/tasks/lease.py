"""A leased task's state transitions, as conditional UPDATEs shared by the API and the worker.

Jobs and evaluations are both leased tasks: a row with the lease columns
(``service.db.tables.Leased``) and a table of its events (``service.db.tables.EventRows``).
``Tasks`` binds these transitions to one kind; ``service.jobs.state`` and
``service.evaluations.state`` are the two bindings.

    queued --claim--> running --finish--> succeeded | failed | cancelled
       ^                 |
       +----release------+        (cancel: queued or running -> cancelled;
                                   fail: queued or running -> failed, no worker holding it)

Each transition names the states it may leave, so concurrent actors (a cancel from the API, a
worker finishing, a second delivery of the same task) cannot move a task out of a terminal state
or take it from a worker that still holds its lease.

Every write a worker makes is fenced by its ``Attempt``: a claim counts one more attempt, and a
write is conditional on the task still being at that attempt under that owner, checked by an
UPDATE that locks the task's row (PostgreSQL) or the database (SQLite) until the write commits.
A worker paused past its lease and resumed after another took the task over (a zombie) is then
refused, whatever it tries to write; a claim waits for a write in flight, so nothing the old
attempt wrote lands after the new one began.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from service.db.queries import page
from service.db.tables import Evaluation, EvaluationEvent, Job, JobEvent, now
from service.errors import Conflict, redact
from service.status import ACTIVE, TERMINAL, JobStatus

# The leased tables and their event tables (the same columns, so the same rules for all).
Leased = type[Job] | type[Evaluation]
Events = type[JobEvent] | type[EvaluationEvent]


def _changed(result: Any) -> bool:
    return isinstance(result, CursorResult) and result.rowcount == 1


@dataclass(frozen=True)
class Attempt:
    """One claim of a task: who holds it and the claim's number, the fencing token every write
    of that worker carries (a takeover counts a new attempt, so the old one's token is stale)."""

    owner: str
    number: int


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


@dataclass(frozen=True)
class Tasks:
    """The transitions of one kind of leased task: its table, its events' table and the column
    there naming the task, the noun its events use, and whether a worker's finish and release
    commit by themselves (a job's) or leave it to the caller's transaction (an evaluation's)."""

    table: Leased
    events: Events
    task_column: str
    noun: str
    commits: bool = True
    # What else a cancel clears (a job's finish estimate).
    cancel_values: dict[str, Any] = field(default_factory=dict)

    def add_event(
        self,
        session: Session,
        task_id: str,
        message: str,
        *,
        level: str = "info",
        type: str = "message",
        data: dict[str, Any] | None = None,
    ) -> None:
        """Append an event (append-only: events are never updated or deleted one by one)."""
        row = {self.task_column: task_id}
        session.add(self.events(level=level, type=type, message=message, data=data, **row))

    def claim(self, session: Session, task_id: str, owner: str, lease_s: float) -> Attempt | None:
        """Take a queued task, or a running one whose lease ran out (its worker died)."""
        return take(session, self.table, task_id, owner, lease_s)

    def hold(self, session: Session, task_id: str, attempt: Attempt) -> bool:
        """The fence, in the caller's transaction: True, with the row locked until the caller
        commits, while ``attempt`` is still the task's latest claim; False once another attempt
        took it over or it went back to the queue. A task that ended under this attempt
        (cancelled, finished) is still held: its worker may say how it stopped and clear up."""
        return fence(session, self.table, task_id, attempt)

    def record(
        self, session: Session, task_id: str, attempt: Attempt, message: str, **event: Any
    ) -> bool:
        """Append a worker's event (``event``: ``add_event``'s keywords) only while ``attempt``
        holds the task (``hold``); the caller commits. False, and nothing added, when stale."""
        if not self.hold(session, task_id, attempt):
            return False
        self.add_event(session, task_id, message, **event)
        return True

    def _ours(self, session: Session, task_id: str, attempt: Attempt, **values: Any) -> bool:
        where = running(self.table, task_id, attempt)
        return _changed(session.execute(update(self.table).where(where).values(**values)))

    def renew(
        self,
        session: Session,
        task_id: str,
        attempt: Attempt,
        lease_s: float,
        progress: dict[str, Any] | None = None,
        *,
        commit: bool = True,
    ) -> bool:
        """Extend the lease and record ``progress`` (column values); False when the task is no
        longer ours to run. With ``commit=False`` the row stays locked for the caller's writes."""
        values = {"lease_until": time.time() + lease_s, **(progress or {})}
        changed = self._ours(session, task_id, attempt, **values)
        if commit:
            session.commit()
        return changed

    def finish(
        self,
        session: Session,
        task_id: str,
        attempt: Attempt,
        status: str,
        *,
        error: dict[str, Any] | None = None,
        values: dict[str, Any] | None = None,
        commit: bool | None = None,
    ) -> bool:
        """Move our running task to a terminal state; False (nothing changed) if not ours."""
        changed = self._ours(
            session,
            task_id,
            attempt,
            status=status,
            finished_at=now(),
            error=error,
            lease_until=None,
            **(values or {}),
        )
        if self.commits if commit is None else commit:
            session.commit()
        return changed

    def release(
        self, session: Session, task_id: str, attempt: Attempt, *, commit: bool | None = None
    ) -> bool:
        """Hand a running task back to the queue (the worker is stopping; it will resume)."""
        changed = self._ours(
            session, task_id, attempt, status=JobStatus.QUEUED, lease_owner=None, lease_until=None
        )
        if self.commits if commit is None else commit:
            session.commit()
        return changed

    def _end(self, session: Session, task_id: str, **values: Any) -> bool:
        table = self.table
        where = (table.id == task_id) & table.status.in_(ACTIVE)
        result = session.execute(update(table).where(where).values(finished_at=now(), **values))
        return _changed(result)

    def cancel(self, session: Session, task_id: str) -> bool:
        """Cancel a task that has not finished; the worker sees it between steps and stops."""
        changed = self._end(session, task_id, status=JobStatus.CANCELLED, **self.cancel_values)
        if changed:
            self.add_event(session, task_id, f"{self.noun} cancelled")
        session.commit()
        return changed

    def cancel_or_refuse(self, session: Session, row: Any, name: str) -> Any:
        """Cancel ``row`` for a client and read it back; 409 (naming it ``name``) once it is
        terminal, also when it ended while the cancel was asked."""
        if row.status in TERMINAL or not self.cancel(session, row.id):
            session.refresh(row)
            raise Conflict(f"{name} already {row.status}; terminal states never change")
        session.refresh(row)
        return row

    def fail(self, session: Session, task_id: str, code: str, message: str) -> None:
        """Fail a task no worker holds (it could not be queued)."""
        message = redact(message)
        error = {"code": code, "message": message}
        self._end(session, task_id, status=JobStatus.FAILED, error=error)
        self.add_event(session, task_id, message, level="error")
        session.commit()

    def events_after(
        self, session: Session, task_id: str, after_seq: int, limit: int
    ) -> tuple[list[Any], bool]:
        """Oldest first: a client follows a task by passing the last id it saw as ``after``."""
        rows = self.events
        where = (getattr(rows, self.task_column) == task_id) & (rows.seq > after_seq)
        return page(session, select(rows).where(where).order_by(rows.seq), limit)

    def listed(
        self, session: Session, query: Any, status: str | None, after: str | None, limit: int
    ) -> tuple[list[Any], bool]:
        """A page of ``query``'s tasks, newest first after the id ``after``, of ``status``."""
        table = self.table
        if status is not None:
            query = query.where(table.status == status)
        if after is not None:
            query = query.where(table.id < after)
        return page(session, query.order_by(table.id.desc()), limit)

    def find_idempotent(self, session: Session, scope: str, key: str) -> Any:
        table = self.table
        where = (table.idempotency_scope == scope) & (table.idempotency_key == key)
        return session.scalar(select(table).where(where))
