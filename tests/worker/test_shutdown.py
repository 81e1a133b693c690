"""A real worker process on Redis, stopped with SIGTERM mid-job (issue 11, item 13).

The stopping worker checkpoints the job, puts it back in the queue and must then take nothing
more: before, it could fetch the very job it had just released, claim it again (a second
"Job started", an attempt counted) and train a step before stopping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from sqlalchemy import select

from service.datasets import service as datasets
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.db.tables import Job, JobEvent
from service.jobs import service as jobs
from service.jobs.schemas import FineTuneRequest
from service.queue import TASK_FINETUNE, FinetunePayload, celery_config
from tests.service.support import finetune_body, make_settings
from tools.processes import Process, worker_process

pytestmark = pytest.mark.slow
BROKER = "redis://127.0.0.1:6379/0"


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"test-shutdown-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(BROKER).delete(name)


def _wait(condition: object, timeout: float, what: str, worker: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{worker.tail()}")


def test_a_stopping_worker_takes_back_nothing(
    tmp_path: Path, shapes_root: Path, queue: str
) -> None:
    settings = make_settings(tmp_path, shapes_root, broker_url=BROKER, training_queue=queue)
    upgrade(settings.database_url)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    broker = Celery("test-sender", set_as_current=False)
    broker.conf.update(celery_config(BROKER, settings.visibility_timeout_s))

    def send(job_id: str) -> None:
        payload = FinetunePayload(job_id=job_id).model_dump()
        broker.send_task(TASK_FINETUNE, kwargs={"payload": payload}, queue=queue)

    env = {
        "RCS_ENV": "local",
        "RCS_DATABASE_URL": settings.database_url,
        "RCS_BROKER_URL": BROKER,
        "RCS_TRAINING_QUEUE": queue,
        "RCS_ARTIFACTS_URL": settings.artifacts_url,
        "RCS_WORK_DIR": str(settings.work_dir),
        "RCS_DEVICE": "cpu",
        "RCS_CHECKPOINT_EVERY": "2",
        "RCS_WORKER_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    worker = worker_process(env, tmp_path / "worker.log").start()
    try:
        # Once ready, the worker has sent its orphans again: the job created after is sent once.
        _wait(lambda: " ready." in worker.tail(200), 120, "the worker to start", worker)
        with sessions() as session:
            dataset = datasets.register_path(
                session, settings, "key-test", "shapes", str(shapes_root)
            )
            body = finetune_body(dataset.id, hyperparameters={"max_steps": 2000, "batch_size": 8})
            job, _ = jobs.create(
                session, settings, FineTuneRequest.model_validate(body), send, "t", None
            )
            job_id = job.id

        def step() -> int:
            with sessions() as session:
                row = session.get(Job, job_id)
                return row.progress_step if row is not None else 0

        _wait(lambda: step() >= 3, 120, "the job to train", worker)
        stopped_at = time.monotonic()
        worker.stop(timeout=60)  # SIGTERM
        stop_s = time.monotonic() - stopped_at
    finally:
        worker.stop()
    with sessions() as session:
        row = session.get(Job, job_id)
        messages = list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
    started = [m for m in messages if m.startswith("Job started")]
    assert row is not None and row.status == "queued", (row and row.status, worker.tail())
    assert len(started) == 1 and row.attempts == 1, (messages, worker.tail())
    assert "Worker stopping: checkpointed, back in the queue" in messages
    # The job's message is back in the queue for the next worker, not held by the stopped one.
    assert redis.Redis.from_url(BROKER).llen(queue) == 1
    assert f"stopping: no longer consuming from {queue}" in worker.tail(400)
    print(f"SIGTERM at step {row.progress_step}: stopped in {stop_s:.1f} s, started once")
