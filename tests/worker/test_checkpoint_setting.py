"""``RCS_CHECKPOINT_EVERY`` is read by the API when it creates a job; the job keeps it.

A job resumed by another worker checkpoints at the same steps, and the card's hyperparameters
say what the run did. The worker's own value of the setting is not used
(docs/reference/settings.md).
"""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.db.engine import make_engine, make_sessionmaker
from service.jobs.state import Attempt
from service.storage import ArtifactStore
from tests.service.support import AUTH, FakeBroker, finetune_body, make_settings
from worker.runner import Lease, WorkerContext, _prepare


def test_a_job_checkpoints_at_the_cadence_of_the_api_that_created_it(
    tmp_path: Path, shapes_root: Path
) -> None:
    api_settings = make_settings(tmp_path, shapes_root, checkpoint_every=3)
    with TestClient(create_app(api_settings)) as client:
        client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        client.headers.update(AUTH)
        dataset = client.post("/datasets", json={"name": "shapes", "path": str(shapes_root)})
        assert dataset.status_code == 200, dataset.text
        job = client.post("/finetune", json=finetune_body(dataset.json()["id"]))
        assert job.status_code == 200, job.text
    worker_settings = make_settings(tmp_path, shapes_root, checkpoint_every=50)
    ctx = WorkerContext(
        settings=worker_settings,
        sessions=make_sessionmaker(make_engine(worker_settings.database_url)),
        store=ArtifactStore.of(worker_settings),
    )
    cfg, observer, _ = _prepare(ctx, Lease(job.json()["id"], Attempt(ctx.owner, 1)))
    assert cfg.train.checkpoint_every == 3 and observer.checkpoint_every == 3
