"""Issue 22 (4): a zombie worker writes nothing.

A worker paused (SIGSTOP) past its lease while a second one took the job over, once resumed,
appended a metrics event ("Step 5/150") and "Training stopped" into the live job's history and
saved a checkpoint into the job's shared folder before it checked its lease. Every write of a
worker is now fenced by its attempt: here attempt 1 loses the job to attempt 2, then tries every
write it has, and each is refused, leaving the events, the job's row, its checkpoint files and
the registry as attempt 2 left them.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select, update

from models.errors import Cancelled
from models.train import Progress
from service.db.tables import (
    Evaluation,
    EvaluationEvent,
    Job,
    JobCheckpoint,
    JobEvent,
    ModelVersion,
)
from service.evaluations import state as evaluation_state
from service.jobs import state
from service.jobs.state import Attempt, take
from service.status import JobStatus
from tests.service.support import make_settings, new_job, worker_context
from tests.worker.test_evaluations import model_folder, new_evaluation
from worker import evaluations as evaluation_runner
from worker import runner
from worker.runner import Lease, WorkerContext, job_dir, published_dir, run_job

__all__ = ["model_folder"]  # the fixture, imported for this module's tests


@pytest.fixture
def ctx(tmp_path: Path, shapes_root: Path) -> WorkerContext:
    # Events at every step, as the run wrote them.
    settings = make_settings(tmp_path, shapes_root, checkpoint_every=2)
    return worker_context(settings, event_every_s=0.0)


def take_over(ctx: WorkerContext, table: Any, task_id: str) -> tuple[Attempt, Attempt]:
    """Attempt 1 (``zombie``) claims, its lease runs out, attempt 2 (``live``) claims."""
    with ctx.sessions() as session:
        zombie = take(session, table, task_id, "zombie", 60)
        session.execute(update(table).values(lease_until=time.time() - 1))
        session.commit()
        live = take(session, table, task_id, "live", 60)
    assert zombie is not None and live is not None
    assert (zombie.number, live.number) == (1, 2)
    return zombie, live


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def history(ctx: WorkerContext, job_id: str) -> list[tuple[str, str]]:
    with ctx.sessions() as session:
        rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id))
        return [(r.type, r.message) for r in rows]


def job_state(ctx: WorkerContext, job_id: str) -> tuple[Any, ...]:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        checkpoints = session.scalars(
            select(JobCheckpoint.step_number).where(JobCheckpoint.job_id == job_id)
        )
        return (
            job.status,
            job.lease_owner,
            job.attempts,
            job.lease_until,
            job.progress_step,
            job.fine_tuned_model,
            sorted(checkpoints),
        )


def progress(step: int) -> Progress:
    return Progress("step", step, 12, 0, {"loss": 1.0}, 1e-3, 10.0, 1.0)


def test_a_stale_attempt_of_a_job_is_refused_every_write(
    ctx: WorkerContext, shapes_root: Path, tmp_path: Path
) -> None:
    job_id = new_job(ctx, shapes_root, hyperparameters={"max_steps": 12, "batch_size": 8})
    zombie, live = take_over(ctx, Job, job_id)
    # Attempt 2 published a checkpoint (as its observer does) and wrote an event.
    published = published_dir(ctx, job_id)
    (published / "step-00000004").mkdir(parents=True)
    (published / "step-00000004" / "trainer.pt").write_bytes(b"attempt 2")
    runner.point_latest(published, "step-00000004")
    with ctx.sessions() as session:
        assert state.record(session, job_id, live, "Job started on live (attempt 2)")
        session.commit()
    events, row, on_disk = history(ctx, job_id), job_state(ctx, job_id), files(job_dir(ctx, job_id))

    lease = Lease(job_id, zombie)
    observer = runner.JobObserver(ctx, lease, checkpoint_every=2)
    # What the loop saved for attempt 1 under its own name, before it paused.
    (observer.folder / "step-00000006").mkdir(parents=True)
    (observer.folder / "step-00000006" / "trainer.pt").write_bytes(b"attempt 1")
    observer.saving[6] = {"loss": 9.0}

    observer.note("zero-shot (dual): top1 0.25")
    assert lease.lost
    assert observer(progress(5)) == "cancel"
    assert observer.should_stop()
    result: Any = SimpleNamespace(card={"wise": {"selected_alpha": 0.5}}, artifact=None)
    assert runner.register(ctx, lease, result, observer).status == "cancelled"
    assert runner._stopped(ctx, lease, observer, "stopped").status == "cancelled"
    ctx.stopping.set()  # a stopping worker would release it: not a job it lost
    assert runner._stopped(ctx, lease, observer, "stopped").status == "cancelled"
    assert runner._failed(ctx, lease, "internal_error", "boom").status == "failed"
    with ctx.sessions() as session:
        assert not state.renew(session, job_id, zombie, 60)
        assert not state.finish(session, job_id, zombie, JobStatus.SUCCEEDED)
        assert not state.release(session, job_id, zombie)
        assert not state.record(session, job_id, zombie, "still here")
        session.commit()
    runner._clean_up(ctx, lease, released=False)

    assert history(ctx, job_id) == events
    assert job_state(ctx, job_id) == row
    assert files(job_dir(ctx, job_id)) == on_disk  # attempt 1's own folder is gone, too
    assert not runner.attempt_dir(ctx, lease).exists()
    with ctx.sessions() as session:
        assert session.scalars(select(JobCheckpoint)).all() == []
        assert session.scalars(select(ModelVersion)).all() == []
        # Attempt 2 still holds the job and writes.
        assert state.record(session, job_id, live, "Step 5/12")


def test_a_stale_attempt_of_an_evaluation_is_refused_every_write(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path
) -> None:
    evaluation_id = new_evaluation(ctx, shapes_root, model_folder, ["val"])
    zombie, live = take_over(ctx, Evaluation, evaluation_id)

    def snapshot() -> tuple[Any, ...]:
        with ctx.sessions() as session:
            row = session.get(Evaluation, evaluation_id)
            assert row is not None
            events = session.scalars(
                select(EvaluationEvent.message).where(
                    EvaluationEvent.evaluation_id == evaluation_id
                )
            )
            values = (row.status, row.lease_owner, row.attempts, row.lease_until, row.results)
            return (*values, row.progress_step, list(events))

    before = snapshot()
    lease = Lease(evaluation_id, zombie)
    watch = evaluation_runner.LeaseWatch(ctx, lease)
    with pytest.raises(Cancelled):
        watch.record("val: top-1 0.2500", {"split": "val"})
    assert not watch.renew(1) and watch.should_stop()
    results = {"val": {"dual": {"top1": 1.0}}}
    assert evaluation_runner._record(ctx, lease, results, 1, "").status == "cancelled"
    assert evaluation_runner._failed(ctx, lease, "internal_error", "boom").status == "failed"
    ctx.stopping.set()
    assert evaluation_runner._stopped(ctx, watch, "stopped").status == "cancelled"
    assert snapshot() == before
    with ctx.sessions() as session:
        assert evaluation_state.record(session, evaluation_id, live, "still attempt 2's")


@pytest.mark.slow
def test_a_worker_resumed_after_a_takeover_leaves_the_live_attempt_alone(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    """The issue's run, in-process: attempt 1 trains; at step 3 its lease is taken over (what a
    claim does once the lease has run out while the worker was paused); it goes on to its next
    step. Nothing it does after lands in the job: no event, no checkpoint; the job's folder is
    left to the new owner, which then resumes from the last checkpoint published before it and
    finishes with a loss curve that never goes back."""
    job_id = new_job(ctx, shapes_root, hyperparameters={"max_steps": 16, "batch_size": 8})
    taken: dict[str, Any] = {}

    def step() -> int:
        with ctx.sessions() as session:
            return int(session.get(Job, job_id).progress_step)  # type: ignore[union-attr]

    def take() -> None:
        with ctx.sessions() as session:
            # A claim after the lease ran out: another owner, one more attempt.
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(lease_owner="live", attempts=Job.attempts + 1, lease_until=time.time() + 60)
            )
            state.add_event(session, job_id, "Job started on live (attempt 2)")
            session.commit()
            taken["seq"] = session.scalar(select(JobEvent.seq).order_by(JobEvent.seq.desc()))
        taken["files"] = files(published_dir(ctx, job_id))
        taken["step"] = step()

    watcher = threading.Thread(target=lambda: (_wait_for(lambda: step() >= 3), take()))
    watcher.start()
    zombie = run_job(ctx, job_id)
    watcher.join()
    assert zombie.status == "cancelled", zombie
    with ctx.sessions() as session:
        late = session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job_id, JobEvent.seq > taken["seq"])
        ).all()
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.lease_owner, job.attempts) == ("running", "live", 2)
    assert late == []  # neither "Step n" nor "Training stopped"
    assert taken["files"], "attempt 1 had published a checkpoint before the takeover"
    assert files(published_dir(ctx, job_id)) == taken["files"]
    assert [p.name for p in job_dir(ctx, job_id).glob("attempt-*")] == []

    live = WorkerContext(ctx.settings, ctx.sessions, ctx.store, owner="live", renew_every_s=0)
    assert run_job(live, job_id).status == "succeeded"
    with ctx.sessions() as session:
        after = session.scalars(
            select(JobEvent).where(
                JobEvent.job_id == job_id,
                JobEvent.seq > taken["seq"],
                JobEvent.type == "metrics",
            )
        ).all()
    steps = [int(e.data["step"]) for e in after if e.data]
    assert steps == sorted(set(steps)) and steps[-1] == 16, steps
    resumed = sorted(taken["files"])
    print(f"taken over at step {taken['step']}: {len(late)} events from attempt 1 after it; ")
    print(f"the new owner resumed from {resumed}, metrics at steps {steps}")


def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
