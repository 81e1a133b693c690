"""The Celery app and its tasks (fine-tuning, evaluation), registered by name.

Run with ``python -m worker`` (solo pool, the training queue): one process per GPU, since
prefork children cannot re-initialise CUDA after fork.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutting_down
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from service.db.engine import make_engine, make_sessionmaker
from service.db.tables import Evaluation, Job
from service.queue import (
    TASK_EVALUATE,
    TASK_FINETUNE,
    EvaluatePayload,
    FinetunePayload,
    celery_config,
)
from service.settings import Settings
from service.status import ACTIVE, JobStatus
from service.storage import ArtifactStore
from worker.evaluations import run_evaluation
from worker.lease import Outcome, WorkerContext
from worker.runner import run_job

log = logging.getLogger(__name__)
# Seconds before a job interrupted by a database outage is delivered again.
DB_RETRY_S = 15
# A starting worker's recovery scan on a database that cannot answer it yet (unreachable, or
# fresh: no tables until the API migrates it at its start) is tried again every
# RECOVERY_RETRY_S seconds for up to RECOVERY_WAIT_S. ProgrammingError is a missing table or
# column: a migration not applied yet.
RECOVERY_WAIT_S = 600.0
RECOVERY_RETRY_S = 2.0
NOT_READY = (OperationalError, InterfaceError, ProgrammingError)
# Sends a task by name: (task, payload, countdown in seconds or None for now).
Send = Callable[[str, dict[str, Any], float | None], Any]


def make_context(settings: Settings) -> WorkerContext:
    engine = make_engine(settings.database_url)
    return WorkerContext(
        settings=settings,
        sessions=make_sessionmaker(engine),
        store=ArtifactStore.of(settings),
    )


def orphan_deliveries(
    session: Session, now: float, table: type[Job] | type[Evaluation] = Job
) -> list[tuple[str, float]]:
    """(id, seconds to wait) for every job (or evaluation) a starting worker should send again.

    Queued jobs and running jobs whose lease has expired go now. A running job whose lease is
    still valid goes when the lease ends: a worker killed and restarted within its lease
    (a container restarted in two seconds) would otherwise leave its job waiting for the
    broker's visibility timeout, two days by default. If the job's worker is in fact alive, it
    renews the lease and that delivery finds the job busy and looks again later.
    """
    rows = session.execute(
        select(table.id, table.status, table.lease_until).where(table.status.in_(ACTIVE))
    )
    deliveries = []
    for job_id, status, lease_until in rows:
        wait = 0.0
        if status == JobStatus.RUNNING and lease_until is not None and lease_until > now:
            wait = math.ceil(lease_until - now) + 1.0
        deliveries.append((job_id, wait))
    return deliveries


def resend_orphans(ctx: WorkerContext, send: Send) -> tuple[int, int]:
    """Send again the jobs and evaluations a dead worker may have left, instead of waiting for
    the broker's visibility timeout (a duplicate delivery is harmless: leases); how many."""
    with ctx.sessions() as session:
        jobs = orphan_deliveries(session, time.time())
        evaluations = orphan_deliveries(session, time.time(), Evaluation)
    for job_id, countdown in jobs:
        send(TASK_FINETUNE, {"job_id": job_id}, countdown or None)  # no ETA for "now"
    for evaluation_id, countdown in evaluations:
        send(TASK_EVALUATE, {"evaluation_id": evaluation_id}, countdown or None)
    return len(jobs), len(evaluations)


def recover_at_start(
    scan: Callable[[], tuple[int, int]],
    stopping: threading.Event,
    wait_s: float = RECOVERY_WAIT_S,
    retry_s: float = RECOVERY_RETRY_S,
) -> threading.Thread | None:
    """Run the start-up recovery ``scan`` now; if the database cannot answer it yet, say so in
    one line and keep trying from a thread (returned), so that the worker consumes, and stops
    on SIGTERM, meanwhile. Nothing is lost while it waits: a database without tables has no
    job to recover, and one out of reach keeps its jobs for the scan that succeeds."""
    started = time.monotonic()
    try:
        _scanned(scan(), started)
        return None
    except NOT_READY as exc:
        log.warning(
            "start-up recovery scan: the database cannot answer it yet (%s); trying again "
            "every %g s for up to %g s (a fresh database has no tables until the API, or "
            "`python -m service migrate`, migrates it)",
            _reason(exc),
            retry_s,
            wait_s,
        )

    def retry() -> None:
        while not stopping.wait(retry_s):
            try:
                _scanned(scan(), started)
                return
            except NOT_READY as exc:
                if time.monotonic() - started >= wait_s:
                    log.error(
                        "start-up recovery scan given up after %g s: %s; jobs a dead worker "
                        "left wait for the broker to deliver them again",
                        wait_s,
                        _reason(exc),
                    )
                    return

    thread = threading.Thread(target=retry, name="recovery-scan", daemon=True)
    thread.start()
    return thread


def _scanned(counts: tuple[int, int], started: float) -> None:
    log.info(
        "start-up recovery scan done after %.0f s: %d jobs and %d evaluations sent again",
        time.monotonic() - started,
        *counts,
    )


def _reason(exc: Exception) -> str:
    """The database's own first line (``relation "jobs" does not exist``), not the SQL."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass(frozen=True)
class Kind:
    """One kind of leased task as the queue delivers it: its task name, the id its payload
    names, the noun the log uses, and what runs it."""

    task: str
    task_id: Callable[[dict[str, Any]], str]
    noun: str
    run: Callable[[WorkerContext, str], Outcome]


KINDS = (
    Kind(TASK_FINETUNE, lambda p: FinetunePayload.model_validate(p).job_id, "job", run_job),
    Kind(
        TASK_EVALUATE,
        lambda p: EvaluatePayload.model_validate(p).evaluation_id,
        "evaluation",
        run_evaluation,
    ),
)


def _register(app: Celery, ctx: WorkerContext, kind: Kind, stop: Callable[[], None]) -> None:
    """Register ``kind``'s task: ``deliver`` it, with ``stop`` to stop consuming."""

    @app.task(name=kind.task, bind=True, max_retries=None)
    def task(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
        return deliver(self, ctx, kind, payload, stop)


def deliver(
    task: Task, ctx: WorkerContext, kind: Kind, payload: dict[str, Any], stop: Callable[[], None]
) -> dict[str, Any]:
    """One delivery of a task: run it, or have it delivered again (the database is down,
    another worker holds it), or put back in the queue (this worker is stopping)."""
    try:
        task_id = kind.task_id(payload)
    except ValidationError as exc:
        # A malformed message cannot succeed on retry: log it and let it be acknowledged.
        log.error("rejected payload %r: %s", payload, exc)
        return {"status": "rejected"}
    try:
        outcome = kind.run(ctx, task_id)
    except (OperationalError, InterfaceError) as exc:
        # The database is unavailable: deliver the task again later; a job resumes from its
        # last checkpoint (the claim admits the lease's own owner).
        log.warning("%s %s: database unavailable, retrying in %ss", kind.noun, task_id, DB_RETRY_S)
        raise task.retry(countdown=DB_RETRY_S, exc=exc) from exc
    if outcome.status == "busy" and outcome.retry_in_s is not None:
        # Another worker holds the task's lease; look again when it would have expired.
        raise task.retry(countdown=outcome.retry_in_s)
    if outcome.status == "released":
        # Stop fetching before the message goes back: a stopping worker must not take the
        # task it has just released (or any other) before its shutdown completes.
        stop()
        raise Reject(f"worker stopping; {kind.noun} back in the queue", requeue=True)
    return {"status": outcome.status, "detail": outcome.detail}


def create_celery(ctx: WorkerContext) -> Celery:
    app = Celery("rcs-worker", set_as_current=True)
    app.conf.update(celery_config(ctx.settings.broker_url, ctx.settings.visibility_timeout_s))
    queue = ctx.settings.training_queue
    app.conf.update(
        worker_hijack_root_logger=False,
        task_default_queue=queue,
        task_routes={TASK_FINETUNE: {"queue": queue}, TASK_EVALUATE: {"queue": queue}},
    )

    # The worker's consumer, handed over by worker_ready (one per process with the solo pool).
    consumers: list[Any] = []

    for kind in KINDS:
        _register(app, ctx, kind, partial(stop_consuming, consumers, queue))

    def stopping(**_: Any) -> None:
        ctx.stopping.set()

    def send(task: str, payload: dict[str, Any], countdown: float | None) -> None:
        app.send_task(task, kwargs={"payload": payload}, queue=queue, countdown=countdown)

    ctx.send = send

    def on_ready(sender: Any = None, **_: Any) -> None:
        if sender is not None:
            consumers.append(sender)
        recover_at_start(lambda: resend_orphans(ctx, send), ctx.stopping)

    worker_shutting_down.connect(stopping, weak=False)
    worker_ready.connect(on_ready, weak=False)
    return app


def stop_consuming(consumers: list[Any], queue: str) -> None:
    """Cancel the consumer of ``queue`` (Celery's ``cancel_consumer``, done from inside the
    worker: kombu defers it until the message being handled is read)."""
    for consumer in consumers:
        if queue in consumer.app.amqp.queues.consume_from:
            consumer.cancel_task_queue(queue)
            log.info("stopping: no longer consuming from %s", queue)
