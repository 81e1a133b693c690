"""Jobs that fail in the worker: a NaN loss, bad data found late, the disk filling up while the
artifact is copied. Each ends ``failed`` with a useful error, nothing half-written becomes
READY, and the same worker takes the next job."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

import models.pipeline
from service.db.tables import Job, ModelVersion
from tests.reliability.conftest import record
from tests.worker.test_runner import ctx, job_row, new_job, versions  # noqa: F401 (fixture)
from worker.runner import WorkerContext, run_job

TINY = {"max_steps": 4, "batch_size": 8}


def next_job_succeeds(worker: WorkerContext, shapes_root: Path, name: str) -> None:
    job_id = new_job(worker, shapes_root, hyperparameters=TINY, registered_model_name=name)
    outcome = run_job(worker, job_id)
    assert outcome.status == "succeeded", outcome
    assert [v.status for v in versions(worker) if v.name == name] == ["READY"]


class Diverging:
    """The job's own objective, whose loss turns NaN from step 2 on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, encoder: Any, batch: Any, step: int) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = self.inner(encoder, batch, step)
        return {**parts, "loss": parts["loss"] * float("nan")} if step >= 2 else parts


def test_a_nan_loss_fails_the_job_and_the_worker_takes_the_next(
    ctx: WorkerContext,  # noqa: F811
    shapes_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = models.pipeline.build_objective

    def diverging(*args: Any, **kwargs: Any) -> Any:
        return Diverging(real(*args, **kwargs))

    monkeypatch.setattr(models.pipeline, "build_objective", diverging)
    job_id = new_job(ctx, shapes_root, hyperparameters=TINY, registered_model_name="nan")
    outcome = run_job(ctx, job_id)
    monkeypatch.undo()
    assert outcome.status == "failed"
    job = job_row(ctx, job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "training_failed"
    assert "non-finite loss at step 2" in job.error["message"]
    assert versions(ctx) == []
    next_job_succeeds(ctx, shapes_root, "after-nan")
    record("nan_loss", jobs=2, failed_with_reason=1, succeeded_after=1, versions_lost=0)


@pytest.mark.slow
def test_an_image_corrupted_after_registration_fails_the_job_naming_it(
    ctx: WorkerContext,  # noqa: F811
    shapes_root: Path,
    tmp_path: Path,
) -> None:
    from models.data.synthetic import write_shapes_dataset

    root = write_shapes_dataset(shapes_root / "late", per_class=4, size=16)
    try:
        job_id = new_job_on(ctx, root)
        # Same size, same name: the fingerprint cannot see it; only decoding finds it.
        image = root / "train" / "circle" / "0001.png"
        image.write_bytes(b"\0" * image.stat().st_size)
        outcome = run_job(ctx, job_id)
    finally:
        shutil.rmtree(root)
    assert outcome.status == "failed"
    error = job_row(ctx, job_id).error
    assert error is not None and "0001.png" in error["message"], error
    next_job_succeeds(ctx, shapes_root, "after-bad-data")
    record("bad_data_late", jobs=2, failed_with_reason=1, succeeded_after=1)


def new_job_on(worker: WorkerContext, root: Path) -> str:
    from service.datasets import service as datasets
    from service.jobs import service as jobs
    from service.jobs.schemas import FineTuneRequest
    from tests.service.support import finetune_body

    with worker.sessions() as session:
        dataset = datasets.register_path(session, worker.settings, "key-test", "late", str(root))
        body = FineTuneRequest.model_validate(
            finetune_body(dataset.id, hyperparameters=TINY, registered_model_name="late")
        )
        job, _ = jobs.create(session, worker.settings, body, lambda _: None, "test", None)
        return job.id


@pytest.mark.slow
def test_a_disk_full_midway_through_the_artifact_copy_leaves_no_ready_version(
    ctx: WorkerContext,  # noqa: F811
    shapes_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy = shutil.copyfile
    copied: list[str] = []

    def fills_up(src: Any, dst: Any, **kwargs: Any) -> Any:
        # The second file is half written when the disk fills up, as a real ENOSPC leaves it.
        if copied:
            data = Path(src).read_bytes()
            Path(dst).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        copied.append(str(src))
        return copy(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", fills_up)
    job_id = new_job(ctx, shapes_root, hyperparameters=TINY, registered_model_name="full")
    outcome = run_job(ctx, job_id)
    monkeypatch.undo()
    assert outcome.status == "failed"
    job = job_row(ctx, job_id)
    assert job.error is not None and "No space left on device" in job.error["message"]
    [version] = versions(ctx)
    assert version.status == "FAILED_REGISTRATION" and version.name == "full"
    artifacts = Path(ctx.settings.artifacts_url)
    assert not (artifacts / "full" / "v1").exists()
    assert [p.name for p in (artifacts / "full").iterdir()] == []  # no temporary copy left
    next_job_succeeds(ctx, shapes_root, "after-disk-full")
    with ctx.sessions() as session:
        ready = session.query(ModelVersion).filter_by(status="READY").count()
    assert ready == 1
    record("disk_full_midway", writes_failed=1, half_written_ready=0, succeeded_after=1)


@pytest.mark.slow
def test_a_database_outage_mid_training_keeps_the_job_for_a_retry(
    tmp_path: Path, shapes_root: Path
) -> None:
    from sqlalchemy.exc import OperationalError

    from service.db.engine import make_engine, make_sessionmaker
    from service.db.migrate import upgrade
    from service.storage import ArtifactStore
    from tests.live import postgres_database_or_skip
    from tests.reliability.proxy import CuttableProxy
    from tests.service.support import make_settings
    from tests.worker.test_runner import metric_steps, when

    url, drop = postgres_database_or_skip()
    direct = make_sessionmaker(make_engine(url))
    try:
        with CuttableProxy(("127.0.0.1", 5432)) as proxy:
            proxied = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
            settings = make_settings(
                tmp_path, shapes_root, database_url=proxied, checkpoint_every=2
            )
            upgrade(settings.database_url)
            worker = WorkerContext(
                settings=settings,
                sessions=make_sessionmaker(make_engine(proxied)),
                store=ArtifactStore.of(settings),
                renew_every_s=0.0,
                event_every_s=0.0,
            )
            job_id = new_job(
                worker, shapes_root, hyperparameters={"max_steps": 12, "batch_size": 8}
            )

            def step() -> int:
                with direct() as session:
                    return int(session.get(Job, job_id).progress_step)  # type: ignore[union-attr]

            watcher = when(lambda: step() >= 5, proxy.cut)
            with pytest.raises(OperationalError):
                run_job(worker, job_id)
            watcher.join()
            with direct() as session:
                held = session.get(Job, job_id)
                assert held is not None and held.status == "running"  # not failed, not lost
            assert (settings.jobs_dir / job_id / "checkpoints" / "latest").is_file()
            proxy.restore()
            again = run_job(worker, job_id)  # the task's retry, on the same worker
            assert again.status == "succeeded", again
            steps = metric_steps(worker, job_id)
            assert steps.count(1) == 1 and steps[-1] == 12  # resumed from its checkpoint
            assert [v.status for v in versions(worker)] == ["READY"]
    finally:
        direct.kw["bind"].dispose()
        drop()
    record("database_outage_worker", jobs=1, outages=1, failed=0, resumed=1, versions=1)
