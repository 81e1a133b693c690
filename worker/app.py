"""The Celery app and its tasks (fine-tuning, evaluation), registered by name.

Run with ``python -m worker`` (solo pool, the training queue): one process per GPU, since
prefork children cannot re-initialise CUDA after fork.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from celery import Celery, Task
from celery.exceptions import Reject
from celery.signals import worker_ready, worker_shutting_down
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import InterfaceError, OperationalError
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
from worker.runner import Outcome, WorkerContext, run_job

log = logging.getLogger(__name__)
# Seconds before a job interrupted by a database outage is delivered again.
DB_RETRY_S = 15


def make_context(settings: Settings) -> WorkerContext:
    engine = make_engine(settings.database_url)
    return WorkerContext(
        settings=settings,
        sessions=make_sessionmaker(engine),
        store=ArtifactStore(settings.artifacts_url, settings.artifact_cache_dir),
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

    @app.task(name=TASK_FINETUNE, bind=True, max_retries=None)
    def finetune(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            job_id = FinetunePayload.model_validate(payload).job_id
        except ValidationError as exc:
            # A malformed message cannot succeed on retry: log it and let it be acknowledged.
            log.error("rejected payload %r: %s", payload, exc)
            return {"status": "rejected"}
        try:
            outcome = run_job(ctx, job_id)
        except (OperationalError, InterfaceError) as exc:
            # The database is unavailable: deliver the job again later; it resumes from its
            # last checkpoint (the claim admits the lease's own owner).
            log.warning("job %s: database unavailable, retrying in %ss", job_id, DB_RETRY_S)
            raise self.retry(countdown=DB_RETRY_S, exc=exc) from exc
        if outcome.status == "busy" and outcome.retry_in_s is not None:
            # Another worker holds the job's lease; look again when it would have expired.
            raise self.retry(countdown=outcome.retry_in_s)
        if outcome.status == "released":
            # Stop fetching before the message goes back: a stopping worker must not take the
            # job it has just released (or any other) before its shutdown completes.
            stop_consuming(consumers, queue)
            raise Reject("worker stopping; job checkpointed", requeue=True)
        return {"status": outcome.status, "detail": outcome.detail}

    @app.task(name=TASK_EVALUATE, bind=True, max_retries=None)
    def evaluate(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            evaluation_id = EvaluatePayload.model_validate(payload).evaluation_id
        except ValidationError as exc:
            log.error("rejected payload %r: %s", payload, exc)
            return {"status": "rejected"}
        try:
            outcome: Outcome = run_evaluation(ctx, evaluation_id)
        except (OperationalError, InterfaceError) as exc:
            log.warning("evaluation %s: database unavailable, retrying", evaluation_id)
            raise self.retry(countdown=DB_RETRY_S, exc=exc) from exc
        if outcome.status == "busy" and outcome.retry_in_s is not None:
            raise self.retry(countdown=outcome.retry_in_s)
        if outcome.status == "released":
            stop_consuming(consumers, queue)
            raise Reject("worker stopping; evaluation back in the queue", requeue=True)
        return {"status": outcome.status, "detail": outcome.detail}

    def stopping(**_: Any) -> None:
        ctx.stopping.set()

    def requeue_orphans(**_: Any) -> None:
        """Jobs a dead worker may have left: send them again instead of waiting for the
        broker's visibility timeout. A duplicate delivery is harmless (leases)."""
        with ctx.sessions() as session:
            for job_id, countdown in orphan_deliveries(session, time.time()):
                app.send_task(
                    TASK_FINETUNE,
                    kwargs={"payload": {"job_id": job_id}},
                    queue=queue,
                    countdown=countdown or None,  # no ETA on a message meant for now
                )
            for evaluation_id, countdown in orphan_deliveries(session, time.time(), Evaluation):
                app.send_task(
                    TASK_EVALUATE,
                    kwargs={"payload": {"evaluation_id": evaluation_id}},
                    queue=queue,
                    countdown=countdown or None,
                )

    def on_ready(sender: Any = None, **_: Any) -> None:
        if sender is not None:
            consumers.append(sender)
        requeue_orphans()

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
