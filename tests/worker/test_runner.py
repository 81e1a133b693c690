"""The worker's job runner in-process: train, register, tolerate double delivery, cancel, resume."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from service.datasets import service as datasets
from service.db.tables import Job, JobEvent, ModelVersion
from service.jobs import service as jobs
from service.jobs import state
from service.jobs.schemas import FineTuneRequest
from service.queue import FinetunePayload
from tests.service.support import finetune_body, make_settings, new_job, worker_context
from worker.runner import WorkerContext, run_job

pytestmark = pytest.mark.slow


@pytest.fixture
def ctx(tmp_path: Path, shapes_root: Path) -> WorkerContext:
    settings = make_settings(tmp_path, shapes_root, checkpoint_every=2)
    return worker_context(settings, event_every_s=0.0)


def job_row(ctx: WorkerContext, job_id: str) -> Job:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def versions(ctx: WorkerContext) -> list[ModelVersion]:
    with ctx.sessions() as session:
        return list(session.scalars(select(ModelVersion)))


def metric_steps(ctx: WorkerContext, job_id: str) -> list[int]:
    with ctx.sessions() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
        )
        return [int(r.data["step"]) for r in rows if r.data]


def when(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` in a thread as soon as ``condition`` holds (polled)."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_job_trains_registers_and_a_second_delivery_does_nothing(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    job_id = new_job(ctx, shapes_root, hyperparameters={"n_epochs": 2, "batch_size": 8})
    outcome = run_job(ctx, job_id)
    assert outcome.status == "succeeded", outcome
    job = job_row(ctx, job_id)
    assert job.status == "succeeded" and job.finished_at is not None
    assert job.fine_tuned_model == "shapes/1"
    assert job.progress_step == job.progress_total == 8
    assert job.wise_ft["selected_alpha"] in (0.0, 0.5, 1.0)
    assert len(job.wise_ft["curve"]) == 3
    [version] = versions(ctx)
    assert version.status == "READY" and version.job_id == job_id
    assert (ctx.store.local_path("shapes/v1") / "artifact.json").is_file()
    assert metric_steps(ctx, job_id)[0] == 1 and metric_steps(ctx, job_id)[-1] == 8
    with ctx.sessions() as session:
        assert [c.step_number for c in jobs.checkpoints(session, job_id)] == [8, 6, 4, 2]
    assert not (ctx.settings.jobs_dir / job_id).exists()  # scratch removed

    again = run_job(ctx, job_id)
    assert again.status == "skipped" and "already succeeded" in again.detail
    assert len(versions(ctx)) == 1


def test_cancel_stops_training_between_steps(ctx: WorkerContext, shapes_root: Path) -> None:
    job_id = new_job(ctx, shapes_root, hyperparameters={"max_steps": 400, "batch_size": 8})

    def cancel() -> None:
        with ctx.sessions() as session:
            state.cancel(session, job_id)

    watcher = when(lambda: job_row(ctx, job_id).progress_step >= 3, cancel)
    outcome = run_job(ctx, job_id)
    watcher.join()
    assert outcome.status == "cancelled"
    job = job_row(ctx, job_id)
    assert job.status == "cancelled"
    assert job.progress_step < 400
    assert versions(ctx) == []


def test_cancel_during_the_wise_ft_sweep_stops_between_alphas(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    """Issue 11 (4): a cancel after training used to wait for all 101 alphas to be evaluated."""
    alphas = [i / 100 for i in range(101)]
    job_id = new_job(
        ctx,
        shapes_root,
        hyperparameters={"max_steps": 4, "batch_size": 8},
        wise_ft={"alphas": alphas},
    )
    cancelled_at: list[float] = []

    def cancel() -> None:
        with ctx.sessions() as session:
            state.cancel(session, job_id)
        cancelled_at.append(time.monotonic())

    watcher = when(lambda: job_row(ctx, job_id).progress_step >= 4, cancel)
    outcome = run_job(ctx, job_id)
    returned_at = time.monotonic()
    watcher.join()
    assert outcome.status == "cancelled"
    # Stopped in the sweep (between alphas or between an alpha's evaluation batches), not after
    # it, at registration.
    assert "sweep stopped" in outcome.detail or "during evaluation" in outcome.detail, outcome
    assert job_row(ctx, job_id).status == "cancelled" and versions(ctx) == []
    stop_s = returned_at - cancelled_at[0]
    assert stop_s < 5, stop_s
    print(f"cancel during the sweep: stopped in {stop_s:.2f} s ({outcome.detail})")


def test_a_stopping_worker_checkpoints_and_the_next_one_resumes(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    job_id = new_job(ctx, shapes_root, hyperparameters={"max_steps": 12, "batch_size": 8})
    watcher = when(lambda: job_row(ctx, job_id).progress_step >= 5, ctx.stopping.set)
    first = run_job(ctx, job_id)
    watcher.join()
    assert first.status == "released"
    assert job_row(ctx, job_id).status == "queued"
    assert (ctx.settings.jobs_dir / job_id / "checkpoints" / "latest").is_file()

    fresh = WorkerContext(ctx.settings, ctx.sessions, ctx.store, renew_every_s=0, event_every_s=0)
    second = run_job(fresh, job_id)
    assert second.status == "succeeded", second
    # Every step once: the second attempt continued from the checkpoint, not from step 1.
    assert metric_steps(ctx, job_id) == list(range(1, 13))
    assert job_row(ctx, job_id).attempts == 2
    assert len(versions(ctx)) == 1


def test_a_stopping_worker_does_not_claim_a_job(ctx: WorkerContext, shapes_root: Path) -> None:
    """Issue 11 (13): a message fetched after SIGTERM (the job just released, or a duplicate)
    was claimed and trained for a step before the worker stopped."""
    job_id = new_job(ctx, shapes_root, hyperparameters={"max_steps": 12, "batch_size": 8})
    ctx.stopping.set()
    outcome = run_job(ctx, job_id)
    assert outcome.status == "released" and "not started" in outcome.detail
    job = job_row(ctx, job_id)
    assert job.status == "queued" and job.attempts == 0 and job.lease_owner is None
    assert metric_steps(ctx, job_id) == []


def test_a_job_whose_worker_died_is_taken_over_after_its_lease(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    job_id = new_job(ctx, shapes_root, method={"type": "zeroshot"})
    with ctx.sessions() as session:
        assert state.claim(session, job_id, "dead-worker", lease_s=60)
    busy = run_job(ctx, job_id)
    assert busy.status == "busy" and busy.retry_in_s is not None and busy.retry_in_s > 50
    with ctx.sessions() as session:
        session.get(Job, job_id).lease_until = time.time() - 1  # type: ignore[union-attr]
        session.commit()
    assert run_job(ctx, job_id).status == "succeeded"


def test_a_changed_dataset_fails_the_job(
    ctx: WorkerContext, tmp_path: Path, shapes_root: Path
) -> None:
    import shutil

    from models.data.synthetic import write_shapes_dataset

    root = write_shapes_dataset(shapes_root / "copy", per_class=4, size=16)
    try:
        with ctx.sessions() as session:
            dataset = datasets.register_path(session, ctx.settings, "key-test", "copy", str(root))
            body = FineTuneRequest.model_validate(finetune_body(dataset.id))
            job, _ = jobs.create(session, ctx.settings, body, lambda _: None, "t", None)
        (root / "train" / "circle" / "0000.png").unlink()
        outcome = run_job(ctx, job.id)
    finally:
        shutil.rmtree(root)
    assert outcome.status == "failed"
    failed = job_row(ctx, job.id)
    assert failed.error is not None and "changed on disk" in failed.error["message"]


def test_payload_schema_rejects_anything_but_a_job_id() -> None:
    FinetunePayload(job_id="ftjob-" + "0" * 24)
    for bad in ({"job_id": "x"}, {"job_id": "ftjob-" + "0" * 24, "extra": 1}, {}):
        with pytest.raises(ValidationError):
            FinetunePayload.model_validate(bad)


def test_storage_failure_fails_the_version_instead_of_leaving_it_pending(
    ctx: WorkerContext, shapes_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> str:
        raise OSError("bucket s3://u:s3cret@host/x unreachable")

    monkeypatch.setattr(ctx.store, "put_folder", broken)
    job_id = new_job(ctx, shapes_root, hyperparameters={"n_epochs": 1, "batch_size": 8})
    assert run_job(ctx, job_id).status == "failed"
    job = job_row(ctx, job_id)
    assert job.status == "failed" and job.error is not None
    assert "s3cret" not in job.error["message"]  # credentials never reach the job's error
    [version] = versions(ctx)
    assert version.status == "FAILED_REGISTRATION"
    assert "storing the artifact failed" in (version.status_message or "")
