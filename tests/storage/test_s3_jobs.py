"""Jobs with RCS_STORAGE_URL on a real S3 server process (moto's): the dataset uploaded to the
bucket, each worker with a work folder (and download cache) of its own, checkpoints uploaded as
training goes, a job stopped on one worker finished on another, and a bucket that disappears
mid-job failing the job with nothing registered."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.datasets import service as datasets
from service.db.tables import Dataset, Evaluation, Job, JobCheckpoint, JobEvent, ModelVersion
from service.errors import InvalidRequest, Unavailable
from service.jobs import service as jobs
from service.jobs.schemas import FineTuneRequest
from service.settings import Settings
from tests.reliability.proxy import CuttableProxy
from tests.service.support import dataset_name, finetune_body, make_settings, worker_context
from worker.evaluations import run_evaluation
from worker.lease import Outcome, WorkerContext
from worker.runner import run_job

pytestmark = pytest.mark.slow


def s3_settings(tmp: Path, machine: str, shapes_root: Path, bucket_url: str) -> Settings:
    """One machine's settings: the shared database, the bucket, and a work folder of its own."""
    return make_settings(
        tmp,
        shapes_root,
        storage_url=bucket_url,
        work_dir=tmp / machine,
        checkpoint_every=2,
        allowed_dataset_roots=[],
    )


def shapes_archive(shapes_root: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(shapes_root, arcname="shapes")
    return buffer.getvalue()


def upload_shapes(ctx: WorkerContext, shapes_root: Path) -> Dataset:
    with ctx.sessions() as session:
        row = datasets.register_upload(
            session,
            ctx.settings,
            "key-test",
            dataset_name(),
            "shapes.tar.gz",
            io.BytesIO(shapes_archive(shapes_root)),
            ctx.store,
        )
        session.expunge(row)
        return row


def queue_job(ctx: WorkerContext, dataset_id: str, **overrides: Any) -> str:
    with ctx.sessions() as session:
        body = FineTuneRequest.model_validate(finetune_body(dataset_id, **overrides))
        job, _ = jobs.create(session, ctx.settings, body, lambda _: None, "test", None)
        return job.id


def events(ctx: WorkerContext, job_id: str) -> list[JobEvent]:
    with ctx.sessions() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        ).all()
        session.expunge_all()
        return list(rows)


def job_row(ctx: WorkerContext, job_id: str) -> Job:
    with ctx.sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None
        session.expunge(row)
        return row


def in_thread(work: Callable[[], Outcome]) -> tuple[threading.Thread, list[Outcome]]:
    done: list[Outcome] = []
    thread = threading.Thread(target=lambda: done.append(work()), daemon=True)
    thread.start()
    return thread, done


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_an_uploaded_dataset_lives_in_the_bucket_and_a_job_trains_from_it(
    tmp_path: Path, shapes_root: Path, bucket_url: str, s3fs_client: Any
) -> None:
    ctx = worker_context(s3_settings(tmp_path, "worker-a", shapes_root, bucket_url))
    dataset = upload_shapes(ctx, shapes_root)
    assert dataset.path.startswith(f"{bucket_url}/datasets/{dataset.id}/")
    assert s3fs_client.exists(dataset.path)
    uploads = ctx.settings.uploads_dir
    assert not uploads.exists() or not [p for p in uploads.iterdir()], "nothing kept locally"
    with ctx.sessions() as session, pytest.raises(InvalidRequest, match="RCS_STORAGE_URL"):
        datasets.register_path(session, ctx.settings, "key-test", "p", str(shapes_root))

    job_id = queue_job(ctx, dataset.id, hyperparameters={"max_steps": 4, "batch_size": 8})
    outcome = run_job(ctx, job_id)
    assert outcome.status == "succeeded", (outcome, [e.message for e in events(ctx, job_id)])
    with ctx.sessions() as session:
        version = session.scalars(select(ModelVersion)).one()
        assert version.status == "READY" and version.source.startswith(f"{bucket_url}/artifacts/")
    # The finished job's checkpoints are gone from the bucket; the dataset is in this
    # worker's cache, unpacked, and released (the cache may evict it now).
    assert not s3fs_client.exists(f"{bucket_url}/jobs/{job_id}")
    cached = [p for p in (ctx.settings.cache_dir / "datasets").iterdir() if p.is_dir()]
    assert [p.name for p in cached] == [Path(dataset.path).stem]
    assert ctx.held._exit_callbacks == type(ctx.held)()._exit_callbacks  # nothing held

    # The monitoring profile the job queued reads the same dataset, from the cache.
    with ctx.sessions() as session:
        profile = session.scalars(select(Evaluation.id)).one()
    assert run_evaluation(ctx, profile).status == "succeeded"
    with ctx.sessions() as session:
        datasets.delete(session, ctx.settings, dataset.id, ctx.store)
    assert not s3fs_client.exists(f"{bucket_url}/datasets/{dataset.id}")


def test_a_job_stopped_on_one_worker_resumes_on_another_from_the_bucket(
    tmp_path: Path, shapes_root: Path, bucket_url: str, s3fs_client: Any
) -> None:
    first = worker_context(s3_settings(tmp_path, "worker-a", shapes_root, bucket_url))
    second = worker_context(s3_settings(tmp_path, "worker-b", shapes_root, bucket_url))
    dataset = upload_shapes(first, shapes_root)
    job_id = queue_job(first, dataset.id, hyperparameters={"max_steps": 40, "batch_size": 8})
    thread, done = in_thread(lambda: run_job(first, job_id))
    index = f"{bucket_url}/jobs/{job_id}/checkpoints.json"
    wait_until(lambda: s3fs_client.exists(index), 120, "a checkpoint published to the bucket")
    first.stopping.set()  # the machine is going away: checkpoint and give the job back
    thread.join(60)
    assert done and done[0].status == "released", done
    assert '"attempt-1/' in s3fs_client.cat_file(index).decode()
    stopped_at = job_row(first, job_id).progress_step

    # The second machine has none of the first's files: only the database and the bucket.
    assert not (second.settings.work_dir / "jobs").exists()
    outcome = run_job(second, job_id)
    assert outcome.status == "succeeded", (outcome, [e.message for e in events(second, job_id)])
    listed = events(second, job_id)
    start = next(i for i, e in enumerate(listed) if "(attempt 2)" in e.message)
    later = [e.data["step"] for e in listed[start:] if e.type == "metrics" and e.data]
    # Resumed from the checkpoint the first machine uploaded, not from step 1.
    assert later and min(later) > 1 and min(later) >= stopped_at - 2, (stopped_at, later)
    assert not s3fs_client.exists(f"{bucket_url}/jobs/{job_id}")


def test_a_bucket_that_disappears_mid_job_fails_it_with_nothing_registered(
    tmp_path: Path, shapes_root: Path, bucket_url: str, s3fs_client: Any
) -> None:
    ctx = worker_context(s3_settings(tmp_path, "worker-a", shapes_root, bucket_url))
    dataset = upload_shapes(ctx, shapes_root)
    job_id = queue_job(ctx, dataset.id, hyperparameters={"max_steps": 30, "batch_size": 8})
    thread, done = in_thread(lambda: run_job(ctx, job_id))
    wait_until(lambda: job_row(ctx, job_id).progress_step >= 2, 120, "training to start")
    bucket = bucket_url.removeprefix("s3://").split("/")[0]
    # The running job may upload between the listing and the bucket's removal ("not empty"):
    # remove again until the bucket is gone, as an operator's script would.
    for _ in range(20):
        try:
            s3fs_client.rm(bucket, recursive=True)
            break
        except OSError:
            s3fs_client.invalidate_cache()
    assert not s3fs_client.exists(bucket)
    thread.join(300)
    assert done, "the job did not end"
    row = job_row(ctx, job_id)
    messages = [e.message for e in events(ctx, job_id)]
    assert done[0].status == "failed" and row.status == "failed", (done, messages)
    assert row.fine_tuned_model is None and "bucket does not exist" in str(row.error)
    assert "rcs-test-secret" not in str(row.error)
    with ctx.sessions() as session:
        statuses = session.scalars(select(ModelVersion.status)).all()
    assert statuses == ["FAILED_REGISTRATION"], statuses


@pytest.fixture
def store_proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[CuttableProxy]:
    """A proxy to the S3 server that the test can cut: this test's workers and API reach the
    bucket only through it (AWS_ENDPOINT_URL), the test's own client directly."""
    host, port = s3_endpoint.removeprefix("http://").split(":")
    with CuttableProxy((host, int(port))) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
        yield proxy


def test_checkpoint_uploads_that_fail_are_retried_and_the_job_finishes(
    tmp_path: Path,
    shapes_root: Path,
    bucket_url: str,
    s3fs_client: Any,
    store_proxy: CuttableProxy,
) -> None:
    ctx = worker_context(s3_settings(tmp_path, "worker-a", shapes_root, bucket_url))
    dataset = upload_shapes(ctx, shapes_root)
    job_id = queue_job(ctx, dataset.id, hyperparameters={"max_steps": 60, "batch_size": 8})
    thread, done = in_thread(lambda: run_job(ctx, job_id))
    index = f"{bucket_url}/jobs/{job_id}/checkpoints.json"
    wait_until(lambda: s3fs_client.exists(index), 120, "a first checkpoint in the bucket")
    store_proxy.cut()  # the network to the store fails mid-job

    def failed_upload() -> bool:
        return any("Uploading a checkpoint failed" in e.message for e in events(ctx, job_id))

    wait_until(failed_upload, 120, "an upload to fail")
    cut_at = json.loads(s3fs_client.cat_file(index))["latest"]
    store_proxy.restore()
    thread.join(300)
    assert done and done[0].status == "succeeded", [e.message for e in events(ctx, job_id)]
    with ctx.sessions() as session:
        assert session.scalars(select(ModelVersion.status)).all() == ["READY"]
        listed = session.scalars(
            select(JobCheckpoint.step_number).where(JobCheckpoint.job_id == job_id)
        ).all()
    assert max(listed) == 60 and any(step > cut_at for step in listed), (cut_at, listed)


def test_a_dataset_upload_the_store_refuses_registers_nothing(
    tmp_path: Path,
    shapes_root: Path,
    bucket_url: str,
    s3fs_client: Any,
    store_proxy: CuttableProxy,
) -> None:
    ctx = worker_context(s3_settings(tmp_path, "api", shapes_root, bucket_url))
    store_proxy.cut()
    with pytest.raises(Unavailable, match="RCS_STORAGE_URL.*nothing was registered"):
        upload_shapes(ctx, shapes_root)
    with ctx.sessions() as session:
        assert session.scalars(select(Dataset)).all() == []
    assert list(ctx.settings.uploads_dir.iterdir()) == [], "no unpacked or packed leftovers"
    assert not s3fs_client.exists(f"{bucket_url}/datasets")
