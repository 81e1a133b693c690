"""The Celery app's settings: the ones GPU training needs (api-shapes.md)."""

from __future__ import annotations

from pathlib import Path

from tests.service.support import make_settings
from worker.app import create_celery, make_context
from worker.contracts import TASK_FINETUNE, celery_config


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
