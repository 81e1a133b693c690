"""The Celery app's settings (the ones GPU training needs, api-shapes.md) and what a starting
worker sends again."""

from __future__ import annotations

from pathlib import Path

from service.datasets import service as datasets
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.jobs import service as jobs
from service.jobs.schemas import FineTuneRequest
from service.queue import TASK_FINETUNE, celery_config
from tests.service.support import finetune_body, make_settings
from worker.app import create_celery, make_context, orphan_deliveries


def test_worker_settings_for_long_gpu_jobs(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, tmp_path, broker_url="redis://127.0.0.1:6379/0")
    app = create_celery(make_context(settings))
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_ignore_result is True and conf.result_backend is None
    assert conf.broker_transport_options["visibility_timeout"] == settings.visibility_timeout_s
    assert conf.task_routes[TASK_FINETUNE]["queue"] == settings.training_queue
    assert TASK_FINETUNE in app.tasks


def test_sqlite_broker_gets_no_redis_options() -> None:
    assert celery_config("sqla+sqlite:///x.db", 10)["broker_transport_options"] == {}


def test_a_starting_worker_sends_orphans_again_when_their_lease_ends(
    tmp_path: Path, shapes_root: Path
) -> None:
    """A worker killed and restarted within its job's lease must not strand the job."""
    settings = make_settings(tmp_path, shapes_root)
    upgrade(settings.database_url)
    sessions = make_sessionmaker(make_engine(settings.database_url))
    with sessions() as session:
        dataset = datasets.register_path(session, settings, "key-test", "shapes", str(shapes_root))
        rows = []
        for _ in range(4):
            body = FineTuneRequest.model_validate(finetune_body(dataset.id))
            job, _ = jobs.create(session, settings, body, lambda _: None, "test", None)
            rows.append(job)
        queued, expired, held, done = rows
        now = 1000.0
        expired.status, expired.lease_until = "running", now - 5
        held.status, held.lease_until = "running", now + 29.5
        done.status = "succeeded"
        session.commit()
        deliveries = sorted(orphan_deliveries(session, now))
    expected = [(queued.id, 0.0), (expired.id, 0.0), (held.id, 31.0)]
    assert deliveries == sorted(expected)
