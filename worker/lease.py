"""A worker's hold on one leased task (a job, an evaluation): claiming it or saying why not,
watching the lease while it runs, and how a run that stops or fails ends, every write fenced by
the claim's attempt.

A task delivered twice, already finished, or held by a live worker is skipped or retried
later (``Outcome``); a claimed one is a ``Lease``. Once a write finds the attempt stale (the
task was cancelled, or taken over after the lease ran out) the lease is lost, and the worker
writes nothing more for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from sqlalchemy.orm import Session, sessionmaker

from models.errors import Cancelled
from service.db.tables import Evaluation, Job
from service.errors import redact
from service.settings import Settings
from service.status import TERMINAL, JobStatus
from service.storage import ArtifactStore
from service.tasks.lease import Attempt, Tasks

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    # Set when the worker is asked to stop: a running task checkpoints and goes back to the queue.
    stopping: threading.Event = field(default_factory=threading.Event)
    # Seconds between lease renewals (each also checks for cancellation) and progress events.
    renew_every_s: float = 0.5
    event_every_s: float = 2.0
    # Sends a task by name (task, payload, countdown): the worker's Celery app, once it runs.
    send: Callable[[str, dict[str, Any], float | None], None] | None = None
    # What the running task holds until it ends: its dataset's entry in the download cache
    # (worker.storage.dataset_path), so the cache never evicts it meanwhile.
    held: ExitStack = field(default_factory=ExitStack)


@dataclass(frozen=True)
class Outcome:
    status: str  # what this delivery did: succeeded, failed, cancelled, skipped, busy, released
    detail: str = ""
    retry_in_s: float | None = None


@dataclass
class Lease:
    """This worker's claim of one job (or evaluation): the attempt its writes are fenced by,
    and whether a write found the attempt stale, said once in the log."""

    task_id: str
    attempt: Attempt
    lost: bool = False

    def lose(self) -> None:
        if not self.lost:
            log.warning(
                "%s: attempt %d no longer holds it (cancelled, or taken over after its lease "
                "ran out); stopping without writing anything more",
                self.task_id,
                self.attempt.number,
            )
        self.lost = True


class TaskWatch:
    """Asked between a task's batches: it renews the lease (or a long run would look abandoned
    and be taken over), records progress events while the attempt holds the task, and says stop
    once the task was cancelled or taken over, or the worker is stopping. A kind names its
    ``tasks``."""

    tasks: ClassVar[Tasks]

    def __init__(self, ctx: WorkerContext, lease: Lease) -> None:
        self.ctx, self.lease = ctx, lease
        self.last_renew = 0.0

    @property
    def lost(self) -> bool:
        return self.lease.lost

    def renew(self, done: int | None = None) -> bool:
        """Renew, recording ``done`` as the progress step; False once the lease is lost."""
        self.last_renew = time.monotonic()
        progress = None if done is None else {"progress_step": done}
        with self.ctx.sessions() as session:
            lease, lease_s = self.lease, self.ctx.settings.lease_s
            if not self.tasks.renew(session, lease.task_id, lease.attempt, lease_s, progress):
                lease.lose()
        return not self.lost

    def record(self, message: str, data: dict[str, Any]) -> None:
        """A metrics event, only while the attempt holds the task; a stale attempt stops here
        (Cancelled) without writing."""
        with self.ctx.sessions() as session:
            lease = self.lease
            if not self.tasks.record(
                session, lease.task_id, lease.attempt, message, type="metrics", data=data
            ):
                lease.lose()
                raise Cancelled(f"the {self.tasks.noun.lower()} is no longer this attempt's")
            session.commit()

    def should_stop(self) -> bool:
        if not self.lost and time.monotonic() - self.last_renew >= self.ctx.renew_every_s:
            self.renew()
        return self.lost or self.ctx.stopping.is_set()


def _nothing() -> None:
    pass


def claim(
    ctx: WorkerContext, tasks: Tasks, task_id: str, finished: Callable[[], None] = _nothing
) -> Lease | Outcome:
    """This delivery's lease on the task, its start recorded; or, for a task gone, finished
    (``finished`` runs then), held by another worker or this one stopping, what to answer."""
    noun = tasks.noun.lower()
    with ctx.sessions() as session:
        row = cast(Job | Evaluation | None, session.get(tasks.table, task_id))
        if row is None:
            return Outcome("skipped", f"no {noun} {task_id}")
        if row.status in TERMINAL:
            # A second delivery of a finished task: never run it twice.
            finished()
            return Outcome("skipped", f"already {row.status}")
        if ctx.stopping.is_set():
            # A message fetched while stopping (the task just released, or a duplicate): leave
            # the task to the next worker instead of claiming it to run one step.
            return Outcome("released", "worker stopping; not started")
        attempt = tasks.claim(session, task_id, ctx.owner, ctx.settings.lease_s)
        if attempt is None:
            session.refresh(row)
            if row.status in TERMINAL:
                return Outcome("skipped", f"already {row.status}")
            wait = max(1.0, (row.lease_until or 0) - time.time() + 1)
            return Outcome("busy", f"held by {row.lease_owner}", retry_in_s=wait)
        lease = Lease(task_id, attempt)
        message = f"{tasks.noun} started on {ctx.owner} (attempt {attempt.number})"
        if not tasks.record(session, task_id, attempt, message):
            lease.lose()  # cancelled (or taken over) in the instant since the claim
            return Outcome("cancelled", "stopped before it started")
        session.commit()
    return lease


@dataclass(frozen=True)
class Stop:
    """How a task ends a run that stopped: what its release publishes with it and says, and
    what it records when it stops for good (None: nothing)."""

    released: str
    publish: Callable[[Session], None] | None = None
    note: str | None = None
    # False: the run never got far enough to release (a job's checkpoint folder is not set up).
    can_release: bool = True


def stopped(ctx: WorkerContext, tasks: Tasks, lease: Lease, where: str, stop: Stop) -> Outcome:
    """A run that stopped: back in the queue if the worker is stopping (the release and what it
    publishes in one transaction), else cancelled (or taken over)."""
    task_id, attempt = lease.task_id, lease.attempt
    with ctx.sessions() as session:
        if stop.can_release and not lease.lost and ctx.stopping.is_set():
            if tasks.release(session, task_id, attempt, commit=False):
                if stop.publish is not None:
                    stop.publish(session)
                tasks.add_event(session, task_id, stop.released)
                session.commit()
                return Outcome("released", "preempted")
            session.rollback()
            if stop.note is None:
                lease.lose()
        if stop.note is not None:
            if tasks.record(session, task_id, attempt, stop.note):
                session.commit()
            else:
                lease.lose()
    return Outcome("cancelled", where)


def failed(ctx: WorkerContext, tasks: Tasks, lease: Lease, code: str, message: str) -> Outcome:
    """The task failed under this attempt (nothing written once the attempt is stale)."""
    message = redact(message)
    with ctx.sessions() as session:
        error = {"code": code, "message": message}
        status: str = JobStatus.FAILED
        if tasks.finish(session, lease.task_id, lease.attempt, status, error=error, commit=False):
            tasks.add_event(
                session, lease.task_id, f"{tasks.noun} failed: {message}", level="error"
            )
            session.commit()
        else:
            lease.lose()  # cancelled or taken over: the task's state is not this attempt's
    return Outcome("failed", message)
