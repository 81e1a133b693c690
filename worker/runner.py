"""Run one job: claim it, train with ``models.pipeline.finetune``, register the artifact.

Everything here tolerates being run twice for the same job: the claim is a conditional UPDATE
with a lease, training resumes from the job's checkpoints, and registration is keyed by job id.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.backbone import LOCAL_DIR, looks_like_path
from models.config import RunConfig, from_dict
from models.data import dataset_root, open_dataset
from models.errors import Cancelled, ModelsError
from models.json_values import json_safe
from models.pipeline import RunResult, finetune
from models.train import KEEP_CHECKPOINTS, Progress
from service.db.tables import Dataset, Job, JobCheckpoint, ModelVersion
from service.errors import redact
from service.jobs import state
from service.paths import is_under
from service.registry import service as registry
from service.settings import Settings
from service.status import TERMINAL, JobStatus, VersionStatus
from service.storage import ArtifactStore

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    # Set when the worker is asked to stop: a running job checkpoints and goes back to the queue.
    stopping: threading.Event = field(default_factory=threading.Event)
    # Seconds between lease renewals (each also checks for cancellation) and progress events.
    renew_every_s: float = 0.5
    event_every_s: float = 2.0


@dataclass(frozen=True)
class Outcome:
    status: str  # what this delivery did: succeeded, failed, cancelled, skipped, busy, released
    detail: str = ""
    retry_in_s: float | None = None


class JobObserver:
    """The training callback: progress events, lease renewal, cancellation between steps."""

    def __init__(self, ctx: WorkerContext, job_id: str, checkpoint_every: int) -> None:
        self.ctx, self.job_id, self.checkpoint_every = ctx, job_id, checkpoint_every
        self.last_renew = self.last_event = 0.0
        self.lost = False

    def note(self, message: str) -> None:
        with self.ctx.sessions() as session:
            state.add_event(session, self.job_id, message)
            session.commit()

    def __call__(self, progress: Progress) -> str | None:
        now = time.monotonic()
        with self.ctx.sessions() as session:
            self._record(session, progress, now)
            session.commit()
            if (
                now - self.last_renew >= self.ctx.renew_every_s
                or progress.step == progress.total_steps
            ):
                self.last_renew = now
                step = (progress.step, progress.total_steps, progress.eta_s)
                if not state.renew(
                    session, self.job_id, self.ctx.owner, self.ctx.settings.lease_s, step
                ):
                    self.lost = True  # cancelled, or another worker took the job over
                    return "cancel"
        return "preempt" if self.ctx.stopping.is_set() else None

    def should_stop(self) -> bool:
        """Asked between evaluation batches and WiSE-FT alphas, where no step calls back: it
        renews the lease too, or a long sweep would look abandoned and be taken over."""
        now = time.monotonic()
        if not self.lost and now - self.last_renew >= self.ctx.renew_every_s:
            self.last_renew = now
            with self.ctx.sessions() as session:
                owner, lease_s = self.ctx.owner, self.ctx.settings.lease_s
                self.lost = not state.renew(session, self.job_id, owner, lease_s)
        return self.lost or self.ctx.stopping.is_set()

    def _record(self, session: Session, progress: Progress, now: float) -> None:
        due = now - self.last_event >= self.ctx.event_every_s
        if progress.event == "eval" or due or progress.step in (1, progress.total_steps):
            self.last_event = now
            data = {k: v for k, v in dataclasses.asdict(progress).items() if v is not None}
            loss = progress.losses.get("loss", float("nan"))
            message = f"Step {progress.step}/{progress.total_steps}: loss={loss:.4f}"
            # JSON columns refuse NaN (finite) and odd values are kept as their text (str).
            safe = json_safe(data, finite=True, fallback=str)
            state.add_event(session, self.job_id, message, type="metrics", data=safe)
        # The loop saves its periodic checkpoint right after this callback returns.
        if self.checkpoint_every and progress.step % self.checkpoint_every == 0:
            state.add_checkpoint(session, self.job_id, progress.step, {"losses": progress.losses})
            # The loop saves this step's checkpoint next and then keeps only its last few:
            # stop listing the ones it is about to remove before they go, never after.
            on_disk = saved_steps(job_dir(self.ctx, self.job_id) / "checkpoints")
            kept = sorted({*on_disk, progress.step})[-KEEP_CHECKPOINTS:]
            forget_checkpoints(session, self.job_id, keep=set(kept))


def job_dir(ctx: WorkerContext, job_id: str) -> Path:
    return ctx.settings.jobs_dir / job_id


def saved_steps(folder: Path) -> set[int]:
    """The steps of the checkpoints ``models.train`` keeps in ``folder`` (``step-00000200``)."""
    names = (p.name.removeprefix("step-") for p in folder.glob("step-*") if p.is_dir())
    return {int(n) for n in names if n.isdigit()}


def forget_checkpoints(session: Session, job_id: str, keep: set[int]) -> None:
    """Mark the job's checkpoints whose files are gone, so ``/checkpoints`` lists only usable
    ones. A checkpoint registered as a version stays: its weights live in the registry."""
    session.execute(
        update(JobCheckpoint)
        .where(
            JobCheckpoint.job_id == job_id,
            JobCheckpoint.fine_tuned_model.is_(None),
            JobCheckpoint.files_deleted_at.is_(None),
            JobCheckpoint.step_number.not_in(keep),
        )
        .values(files_deleted_at=int(time.time()))
    )


def _final_checkpoint(
    session: Session, job_id: str, step: int, metrics: dict[str, Any], ref: str
) -> None:
    """Record the job's last checkpoint as the registered version ``ref`` (usable after the
    job's work folder is gone, as OpenAI's ``fine_tuned_model_checkpoint``)."""
    state.add_checkpoint(session, job_id, step, metrics)
    session.flush()
    row = session.scalar(
        select(JobCheckpoint).where(
            JobCheckpoint.job_id == job_id, JobCheckpoint.step_number == step
        )
    )
    assert row is not None
    row.metrics = {**row.metrics, **metrics}  # a periodic checkpoint at this step keeps its losses
    row.fine_tuned_model, row.files_deleted_at = ref, None


def run_job(ctx: WorkerContext, job_id: str) -> Outcome:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            return Outcome("skipped", f"no job {job_id}")
        if job.status in TERMINAL:
            # A second delivery of a finished job: never train or register twice. A job
            # cancelled while back in the queue may have left checkpoints: nothing resumes them.
            _remove_checkpoints(ctx, job_id)
            return Outcome("skipped", f"already {job.status}")
        if ctx.stopping.is_set():
            # A message fetched while stopping (the job just released, or a duplicate): leave
            # the job to the next worker instead of claiming it to train one step.
            return Outcome("released", "worker stopping; not started")
        if not state.claim(session, job_id, ctx.owner, ctx.settings.lease_s):
            session.refresh(job)
            if job.status in TERMINAL:
                return Outcome("skipped", f"already {job.status}")
            wait = max(1.0, (job.lease_until or 0) - time.time() + 1)
            return Outcome("busy", f"held by {job.lease_owner}", retry_in_s=wait)
        session.refresh(job)
        state.add_event(session, job_id, f"Job started on {ctx.owner} (attempt {job.attempts})")
        session.commit()
    return _train_and_register(ctx, job_id)


def _train_and_register(ctx: WorkerContext, job_id: str) -> Outcome:
    observer = None
    try:
        cfg, observer = _prepare(ctx, job_id)
        result = finetune(
            cfg,
            callback=observer,
            checkpoint_dir=job_dir(ctx, job_id) / "checkpoints",
            note=observer.note,
            should_stop=observer.should_stop,
        )
        outcome = register(ctx, job_id, result)
    except Cancelled as exc:
        outcome = _stopped(ctx, job_id, observer, str(exc))
    except (OperationalError, InterfaceError):
        # The database went away, which is not the job's fault: it stays ours (the lease runs
        # out if we die) and its checkpoints stay, so the task can try it again and resume.
        raise
    except ModelsError as exc:
        outcome = _failed(ctx, job_id, type(exc).__name__, str(exc))
    except Exception as exc:  # a bug or an environment failure: fail the job, keep the worker
        log.exception("job %s failed", job_id)
        outcome = _failed(ctx, job_id, "internal_error", f"{type(exc).__name__}: {exc}")
    if outcome.status != "released":
        _remove_checkpoints(ctx, job_id)
    return outcome


def _remove_checkpoints(ctx: WorkerContext, job_id: str) -> None:
    """A finished job's scratch, its checkpoints with it; the final one lives in the registry."""
    shutil.rmtree(job_dir(ctx, job_id), ignore_errors=True)
    with ctx.sessions() as session:
        forget_checkpoints(session, job_id, keep=set())
        session.commit()


def _prepare(ctx: WorkerContext, job_id: str) -> tuple[RunConfig, JobObserver]:
    """The job's RunConfig with this machine's paths and device filled in."""
    folder = job_dir(ctx, job_id)
    folder.mkdir(parents=True, exist_ok=True)
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        dataset = session.get(Dataset, job.dataset_id) if job else None
        if job is None or dataset is None:
            raise ModelsError(f"job {job_id} or its dataset disappeared")
        cfg = from_dict(RunConfig, job.run_config)
        _check_fingerprint(dataset)
        descriptions = None
        if job.descriptions:
            descriptions = folder / "descriptions.json"
            descriptions.write_text(json.dumps(job.descriptions), encoding="utf-8")
        backbone = cfg.backbone
        if job.base_version_id is not None:
            base = session.get(ModelVersion, job.base_version_id)
            if base is None or base.status != VersionStatus.READY:
                raise ModelsError(f"base model {job.model} is no longer available")
            key = registry.version_key(base.name, base.version)
            local = ctx.store.local_path(key, base.digest)
            backbone = dataclasses.replace(backbone, arch=str(local))
        else:
            check_server_paths(ctx.settings, backbone.arch, backbone.pretrained)
    cfg = dataclasses.replace(
        cfg,
        backbone=backbone,
        data=dataclasses.replace(
            cfg.data,
            descriptions=str(descriptions) if descriptions else None,
            within=str(dataset_root(dataset.path)),
        ),
        train=dataclasses.replace(cfg.train, device=ctx.settings.device),
        output_dir=str(folder / "artifact"),
    )
    return cfg, JobObserver(ctx, job_id, cfg.train.checkpoint_every)


def check_server_paths(settings: Settings, arch: str, pretrained: str | None) -> None:
    """A model folder or weights file is confined again on this machine, as at creation."""
    folder = arch.removeprefix(LOCAL_DIR)
    candidates = (folder if folder != arch or looks_like_path(arch) else None, pretrained)
    for value in (v for v in candidates if v is not None and looks_like_path(v)):
        if not is_under(Path(value), settings.allowed_model_roots):
            raise ModelsError(
                f"{value} is not under an allowed model root on this worker "
                "(RCS_ALLOWED_MODEL_ROOTS)"
            )


def _check_fingerprint(dataset: Dataset) -> None:
    if dataset.deleted_at is not None:  # deleted while the job was being created
        raise ModelsError(f"dataset {dataset.id} was deleted")
    # Confined again, as at registration: a symlink swapped in since then must not be followed.
    current = open_dataset(dataset.path, within=dataset_root(dataset.path)).fingerprint
    if current != dataset.fingerprint:
        raise ModelsError(
            f"dataset {dataset.id} changed on disk since it was registered ({dataset.path})"
        )


def register(ctx: WorkerContext, job_id: str, result: RunResult) -> Outcome:
    """PENDING version -> artifact copied to storage -> READY and job succeeded, together."""
    card = json_safe(
        {k: v for k, v in result.card.items() if k != "files"}, finite=True, fallback=str
    )
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        version = registry.begin_version(session, job.registered_model_name, job_id, card)
        key = registry.version_key(version.name, version.version)
        try:
            source = ctx.store.put_folder(result.artifact.path, key)
        except Exception as exc:
            # Never leave a version PENDING forever: the job fails, and so does its version.
            registry.mark_failed(session, version, redact(f"storing the artifact failed: {exc}"))
            raise
        registry.mark_ready(
            session, version, source, registry.artifact_digest(result.artifact.path)
        )
        ref = f"{version.name}/{version.version}"
        steps = (card.get("training") or {}).get("steps", job.progress_step)
        values = {
            "fine_tuned_model": ref,
            "wise_ft": card.get("wise") or {},
            "progress_step": steps,
        }
        if not state.finish(
            session, job_id, ctx.owner, JobStatus.SUCCEEDED, values=values, commit=False
        ):
            # Cancelled (or taken over) while registering: the version must not go READY.
            session.rollback()
            registry.mark_failed(session, version, "the job stopped before registration finished")
            ctx.store.delete(key)
            return Outcome("cancelled", "stopped before registration")
        selected = {"selected": (card.get("metrics") or {}).get("selected")}
        _final_checkpoint(session, job_id, steps, selected, ref)
        state.add_event(
            session, job_id, f"Registered {ref} (alpha={card['wise']['selected_alpha']})"
        )
        state.add_event(session, job_id, "The job has successfully completed")
        session.commit()
    return Outcome("succeeded", ref)


def _stopped(ctx: WorkerContext, job_id: str, observer: JobObserver | None, where: str) -> Outcome:
    with ctx.sessions() as session:
        if observer is not None and not observer.lost and ctx.stopping.is_set():
            state.release(session, job_id, ctx.owner)
            state.add_event(session, job_id, "Worker stopping: checkpointed, back in the queue")
            session.commit()
            return Outcome("released", "preempted")
        state.add_event(session, job_id, "Training stopped")
        session.commit()
    return Outcome("cancelled", where)


def _failed(ctx: WorkerContext, job_id: str, code: str, message: str) -> Outcome:
    message = redact(message)
    with ctx.sessions() as session:
        if state.finish(
            session,
            job_id,
            ctx.owner,
            JobStatus.FAILED,
            error={"code": code, "message": message},
            commit=False,
        ):
            state.add_event(session, job_id, f"Job failed: {message}", level="error")
        session.commit()
    return Outcome("failed", message)
