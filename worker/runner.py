"""Run one job: claim it, train with ``models.pipeline.finetune``, register the artifact.

Everything here tolerates being run twice for the same job: the claim is a conditional UPDATE
with a lease, training resumes from the job's checkpoints, and registration is keyed by job id.

Every write is fenced by the claim's attempt (``service.tasks.lease``, ``worker.lease``): a
worker paused past its lease while another took the job over writes nothing once it resumes,
neither an event nor a status nor a version. Its files are its own: an attempt trains in
``attempt-N/`` under the job's folder, and a checkpoint it saved moves into the job's
``checkpoints/``, where the next attempt resumes from, only inside a fenced transaction. A
stale attempt's folder is removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from models.backbone import LOCAL_DIR, looks_like_path
from models.config import RunConfig, from_dict
from models.data import dataset_root, open_dataset
from models.errors import Cancelled, ModelsError
from models.json_values import json_safe
from models.pipeline import RunResult, finetune, run_key
from models.train import KEEP_CHECKPOINTS, LATEST, Progress, latest_checkpoint
from service.db.tables import Dataset, Job, JobCheckpoint, ModelVersion
from service.errors import ServiceError, error_code, redact
from service.evaluations import state as evaluation_state
from service.jobs import state
from service.monitor import service as monitor
from service.paths import is_under
from service.queue import TASK_EVALUATE
from service.registry import service as registry
from service.settings import Settings
from service.status import TERMINAL, JobStatus, VersionStatus
from worker.lease import Lease, Outcome, Stop, WorkerContext, claim, failed, stopped
from worker.storage import RemoteCheckpoints, dataset_path

log = logging.getLogger(__name__)


class JobObserver:
    """The training callback: progress events, lease renewal, cancellation between steps, and
    the checkpoints this attempt saved moved where the next attempt resumes from."""

    def __init__(
        self,
        ctx: WorkerContext,
        lease: Lease,
        checkpoint_every: int,
        remote: RemoteCheckpoints | None = None,
    ) -> None:
        self.ctx, self.lease, self.checkpoint_every = ctx, lease, checkpoint_every
        self.job_id = lease.task_id
        # The job's checkpoints in an object store (worker.storage), or None: in jobs_dir.
        self.remote = remote
        self.upload_failed = False
        self.last_renew = self.last_event = 0.0
        # The losses at each step the loop saves a checkpoint after, until it is published.
        self.saving: dict[int, dict[str, float]] = {}

    @property
    def lost(self) -> bool:
        return self.lease.lost

    @property
    def folder(self) -> Path:
        """Where the loop saves this attempt's checkpoints: its own, nobody else writes there."""
        return attempt_dir(self.ctx, self.lease) / "checkpoints"

    def note(self, message: str) -> None:
        with self.ctx.sessions() as session:
            if state.record(session, self.job_id, self.lease.attempt, message):
                session.commit()
            else:
                self.lease.lose()

    def __call__(self, progress: Progress) -> str | None:
        if self.lost:
            return "cancel"
        now = time.monotonic()
        stopping = self.ctx.stopping.is_set()
        if (self.checkpoint_every and progress.step % self.checkpoint_every == 0) or stopping:
            self.saving[progress.step] = progress.losses  # the loop saves right after this
        last = progress.step == progress.total_steps
        renew = now - self.last_renew >= self.ctx.renew_every_s or last
        event = progress.event == "eval" or now - self.last_event >= self.ctx.event_every_s
        event = event or progress.step in (1, progress.total_steps)
        ready = self.upload()
        if renew or event or ready:
            with self.ctx.sessions() as session:
                step = (progress.step, progress.total_steps, progress.eta_s)
                if not self._hold(session, renew, now, step):
                    return "cancel"  # cancelled, or another worker took the job over
                if event:
                    self.last_event = now
                    self._event(session, progress)
                self.publish(session)
                session.commit()
        return "preempt" if stopping else None

    def should_stop(self) -> bool:
        """Asked between evaluation batches and WiSE-FT alphas, where no step calls back: it
        renews the lease too, or a long sweep would look abandoned and be taken over."""
        now = time.monotonic()
        if not self.lost and now - self.last_renew >= self.ctx.renew_every_s:
            self.upload()
            with self.ctx.sessions() as session:
                if self._hold(session, True, now, None):
                    self.publish(session)  # the last step's checkpoint, saved after training
                    session.commit()
        return self.lost or self.ctx.stopping.is_set()

    def _hold(
        self,
        session: Session,
        renew: bool,
        now: float,
        step: tuple[int, int | None, float | None] | None,
    ) -> bool:
        """The fence for this transaction's writes: the lease renewed when due (only while the
        job runs), else the row locked while the attempt still holds it."""
        attempt = self.lease.attempt
        if renew:
            self.last_renew = now
            lease_s = self.ctx.settings.lease_s
            held = state.renew(session, self.job_id, attempt, lease_s, step, commit=False)
        else:
            held = state.hold(session, self.job_id, attempt)
        if not held:
            self.lease.lose()
        return held

    def _event(self, session: Session, progress: Progress) -> None:
        data = {k: v for k, v in dataclasses.asdict(progress).items() if v is not None}
        loss = progress.losses.get("loss", float("nan"))
        message = f"Step {progress.step}/{progress.total_steps}: loss={loss:.4f}"
        # JSON columns refuse NaN (finite) and odd values are kept as their text (str).
        safe = json_safe(data, finite=True, fallback=str)
        state.add_event(session, self.job_id, message, type="metrics", data=safe)

    def upload(self) -> dict[int, Path]:
        """Upload this attempt's unpublished checkpoints to the object store, outside any
        transaction (no lock is held while they go); those ready to publish. A failed upload
        is retried at the next step: training goes on, and the job keeps resuming from its
        last published checkpoint meanwhile."""
        ready = self._unpublished()
        if not ready or self.remote is None:
            return ready
        try:
            self.remote.upload(ready)
        except Exception as exc:
            log.warning("job %s: uploading checkpoints failed, retrying: %s", self.job_id, exc)
            if not self.upload_failed:
                self.upload_failed = True
                self.note(f"Uploading a checkpoint failed, retrying: {redact(str(exc))}")
        else:
            self.upload_failed = False
        return {s: p for s, p in ready.items() if s in self.remote.uploaded}

    def _unpublished(self) -> dict[int, Path]:
        """This attempt's saved checkpoints newer than the job's latest published one."""
        if not self.saving:
            return {}
        if self.remote is not None:
            newest = self.remote.newest
        else:
            newest = max(saved_steps(published_dir(self.ctx, self.job_id)), default=-1)
        return {s: p for s, p in step_folders(self.folder).items() if s > newest}

    def publish(self, session: Session) -> None:
        """Move this attempt's new checkpoints into the job's folder, list them, and forget the
        ones the job no longer keeps. The caller holds the fence (the job's row is locked, so
        no other attempt can claim the job meanwhile) and commits."""
        ready = self._unpublished()
        if not ready:
            return
        if self.remote is not None:
            # Only what is uploaded already: nothing goes over the network under the fence.
            ready = {s: p for s, p in ready.items() if s in self.remote.uploaded}
            if not ready:
                return
            kept = self.remote.publish(ready)
            for step in sorted(ready):
                losses = self.saving.pop(step, None)
                state.add_checkpoint(session, self.job_id, step, {"losses": losses or {}})
            self.saving = {s: losses for s, losses in self.saving.items() if s > max(ready)}
            forget_checkpoints(session, self.job_id, keep=kept)
            return
        published = published_dir(self.ctx, self.job_id)
        published.mkdir(parents=True, exist_ok=True)
        for step, folder in sorted(ready.items()):
            target = published / folder.name
            shutil.rmtree(target, ignore_errors=True)
            os.replace(folder, target)
            losses = self.saving.pop(step, None)
            state.add_checkpoint(session, self.job_id, step, {"losses": losses or {}})
        newest = max(ready)
        point_latest(published, ready[newest].name)
        self.saving = {s: losses for s, losses in self.saving.items() if s > newest}
        kept = prune(published, KEEP_CHECKPOINTS)
        forget_checkpoints(session, self.job_id, keep=kept)


def attempt_dir(ctx: WorkerContext, lease: Lease) -> Path:
    """The attempt's own scratch (its checkpoints as it saves them, its artifact)."""
    return job_dir(ctx, lease.task_id) / f"attempt-{lease.attempt.number}"


def published_dir(ctx: WorkerContext, job_id: str) -> Path:
    """The job's checkpoints that a next attempt resumes from: written only under the fence."""
    return job_dir(ctx, job_id) / "checkpoints"


def step_folders(folder: Path) -> dict[int, Path]:
    """The checkpoints ``models.train`` saved in ``folder`` (``step-00000200``), by step."""
    found = {}
    for path in folder.glob("step-*"):
        number = path.name.removeprefix("step-")
        if number.isdigit() and path.is_dir():
            found[int(number)] = path
    return found


def point_latest(folder: Path, name: str) -> None:
    """Point ``latest`` (what ``models.train`` resumes from) at ``name``, atomically."""
    pointer = folder / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, folder / LATEST)


def prune(folder: Path, keep: int) -> set[int]:
    """Remove all but the ``keep`` latest checkpoints in ``folder``; the steps kept."""
    steps = step_folders(folder)
    kept = sorted(steps)[-keep:]
    for step, path in steps.items():
        if step not in kept:
            shutil.rmtree(path, ignore_errors=True)
    return set(kept)


def resume_point(ctx: WorkerContext, lease: Lease) -> None:
    """Start the attempt's own checkpoints from the job's latest published one (hard links:
    a checkpoint's files are never rewritten once in place)."""
    latest = latest_checkpoint(published_dir(ctx, lease.task_id))
    if latest is None:
        return
    own = attempt_dir(ctx, lease) / "checkpoints"
    own.mkdir(parents=True, exist_ok=True)
    shutil.copytree(latest, own / latest.name, copy_function=_link, dirs_exist_ok=True)
    point_latest(own, latest.name)


def _link(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # a filesystem without hard links
        shutil.copy2(source, target)


def remove_stale_attempts(ctx: WorkerContext, lease: Lease) -> None:
    """Earlier attempts' folders: their workers died, or are zombies whose writes are refused
    (one still running removes its own folder when it stops)."""
    for folder in job_dir(ctx, lease.task_id).glob("attempt-*"):
        number = folder.name.removeprefix("attempt-")
        if number.isdigit() and int(number) < lease.attempt.number:
            shutil.rmtree(folder, ignore_errors=True)


def job_dir(ctx: WorkerContext, job_id: str) -> Path:
    return ctx.settings.jobs_dir / job_id


def saved_steps(folder: Path) -> set[int]:
    """The steps of the checkpoints ``models.train`` keeps in ``folder`` (``step-00000200``)."""
    return set(step_folders(folder))


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
    # A job cancelled while back in the queue may have left checkpoints: nothing resumes them.
    lease = claim(ctx, state.JOBS, job_id, partial(_remove_checkpoints, ctx, job_id))
    if isinstance(lease, Outcome):
        return lease
    with ctx.held:  # the job's dataset stays in the download cache until it ends
        return _train_and_register(ctx, lease)


def _train_and_register(ctx: WorkerContext, lease: Lease) -> Outcome:
    observer = None
    try:
        cfg, observer, key = _prepare(ctx, lease)
        result = finetune(
            cfg,
            callback=observer,
            checkpoint_dir=observer.folder,
            note=observer.note,
            should_stop=observer.should_stop,
            resume_key=key,
        )
        outcome = register(ctx, lease, result, observer)
    except Cancelled as exc:
        outcome = _stopped(ctx, lease, observer, str(exc))
    except (OperationalError, InterfaceError):
        # The database went away, which is not the job's fault: it stays ours (the lease runs
        # out if we die) and its checkpoints stay, so the task can try it again and resume.
        raise
    except ModelsError as exc:
        outcome = _failed(ctx, lease, error_code(exc), str(exc))
    except Exception as exc:  # a bug or an environment failure: fail the job, keep the worker
        log.exception("job %s failed", lease.task_id)
        outcome = _failed(ctx, lease, "internal_error", f"{type(exc).__name__}: {exc}")
    _clean_up(ctx, lease, released=outcome.status == "released")
    return outcome


def _clean_up(ctx: WorkerContext, lease: Lease, released: bool) -> None:
    """The attempt's own folder always goes. The job's, with the checkpoints published for a
    next attempt, only when the job ended under this attempt: a released job resumes from them,
    and a job taken over is the new attempt's."""
    shutil.rmtree(attempt_dir(ctx, lease), ignore_errors=True)
    if released:
        return
    with ctx.sessions() as session:
        if state.hold(session, lease.task_id, lease.attempt):
            job = session.get(Job, lease.task_id)
            if job is not None and job.status in TERMINAL:
                _remove_checkpoints(ctx, lease.task_id, session)


def _remove_checkpoints(ctx: WorkerContext, job_id: str, session: Session | None = None) -> None:
    """A finished job's scratch, its checkpoints with it; the final one lives in the registry.
    In ``session`` (which holds the fence) if given, else in a session of its own."""
    shutil.rmtree(job_dir(ctx, job_id), ignore_errors=True)
    if ctx.store.remote:
        ctx.store.remove(job_id)
    with ctx.sessions() if session is None else contextlib.nullcontext(session) as own:
        forget_checkpoints(own, job_id, keep=set())
        own.commit()


def _prepare(ctx: WorkerContext, lease: Lease) -> tuple[RunConfig, JobObserver, str | None]:
    """The job's RunConfig with this machine's paths and device filled in, its checkpoints
    starting from the job's latest published one, and the key a checkpoint must match to be
    resumed (None: the config's own, ``models.pipeline.run_key``).

    With an object store, the dataset and a base version are this machine's downloads, whose
    paths differ between machines: the key is then the job's stored config's, so a job
    resumes on any worker."""
    folder = attempt_dir(ctx, lease)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_attempts(ctx, lease)
    remote = RemoteCheckpoints(ctx, lease) if ctx.store.remote else None
    if remote is not None:
        own = folder / "checkpoints"
        resumed = remote.resume_into(own)
        if resumed is not None:
            point_latest(own, resumed.name)
    else:
        resume_point(ctx, lease)
    with ctx.sessions() as session:
        job = session.get(Job, lease.task_id)
        dataset = session.get(Dataset, job.dataset_id) if job else None
        if job is None or dataset is None:
            raise ModelsError(f"job {lease.task_id} or its dataset disappeared")
        cfg = from_dict(RunConfig, job.run_config)
        key = run_key(cfg) if remote is not None else None
        data_path = dataset_path(ctx, dataset)
        _check_fingerprint(dataset, data_path)
        descriptions = None
        if job.descriptions:
            descriptions = _write_descriptions(ctx, lease, job.descriptions)
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
            path=str(data_path),
            descriptions=str(descriptions) if descriptions else None,
            within=str(dataset_root(data_path)),
        ),
        train=dataclasses.replace(cfg.train, device=ctx.settings.device),
        output_dir=str(folder / "artifact"),
    )
    return cfg, JobObserver(ctx, lease, cfg.train.checkpoint_every, remote), key


def _write_descriptions(ctx: WorkerContext, lease: Lease, descriptions: Any) -> Path:
    """The job's descriptions as a file at the job's folder: one path for every attempt, since
    the path is part of the run's key that a checkpoint must match to be resumed. The same
    bytes each time, renamed into place, so attempts writing it at once do no harm."""
    target = job_dir(ctx, lease.task_id) / "descriptions.json"
    tmp = attempt_dir(ctx, lease) / "descriptions.json"
    tmp.write_text(json.dumps(descriptions), encoding="utf-8")
    os.replace(tmp, target)
    return target


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


def _check_fingerprint(dataset: Dataset, path: Path) -> None:
    """``path`` (this machine's copy of ``dataset``) holds what was registered."""
    if dataset.deleted_at is not None:  # deleted while the job was being created
        raise ModelsError(f"dataset {dataset.id} was deleted")
    # Confined again, as at registration: a symlink swapped in since then must not be followed.
    current = open_dataset(path, within=dataset_root(path)).fingerprint
    if current != dataset.fingerprint:
        raise ModelsError(
            f"dataset {dataset.id} changed on disk since it was registered ({dataset.path})"
        )


def register(
    ctx: WorkerContext, lease: Lease, result: RunResult, observer: JobObserver | None = None
) -> Outcome:
    """PENDING version -> artifact copied to storage -> READY and job succeeded, together; each
    step only while this attempt holds the job."""
    job_id, attempt = lease.task_id, lease.attempt
    card = json_safe(
        {k: v for k, v in result.card.items() if k != "files"}, finite=True, fallback=str
    )
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        # The version is created under the fence (the lease renewed, uncommitted). The registry
        # commits as it goes (a new model's row first), so the lease is renewed again, for the
        # copy, once the version exists.
        lease_s = ctx.settings.lease_s
        if not state.renew(session, job_id, attempt, lease_s, commit=False):
            lease.lose()
            return Outcome("cancelled", "stopped before registration")
        version = registry.begin_version(session, job.registered_model_name, job_id, card)
        key = registry.version_key(version.name, version.version)
        if not state.renew(session, job_id, attempt, lease_s):
            _abandon(ctx, session, lease, version, key)
            return Outcome("cancelled", "stopped before registration")
        try:
            source = ctx.store.put_folder(result.artifact.path, key)
        except Exception as exc:
            # Never leave a version PENDING forever: the job fails, and so does its version.
            if state.hold(session, job_id, attempt):
                registry.mark_failed(
                    session, version, redact(f"storing the artifact failed: {exc}")
                )
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
            session, job_id, attempt, JobStatus.SUCCEEDED, values=values, commit=False
        ):
            session.rollback()
            _abandon(ctx, session, lease, version, key)
            return Outcome("cancelled", "stopped before registration")
        if observer is not None:
            observer.publish(session)  # the last step's losses, for the final checkpoint
        selected = {"selected": (card.get("metrics") or {}).get("selected")}
        _final_checkpoint(session, job_id, steps, selected, ref)
        state.add_event(
            session, job_id, f"Registered {ref} (alpha={card['wise']['selected_alpha']})"
        )
        profile_id = _queue_profile(session, version, job_id)
        state.add_event(session, job_id, "The job has successfully completed")
        session.commit()
    if profile_id is not None and ctx.send is not None:
        try:
            ctx.send(TASK_EVALUATE, {"evaluation_id": profile_id}, None)
        except Exception:  # it stays queued: a starting worker sends queued evaluations again
            log.exception("could not send the profile evaluation %s", profile_id)
    return Outcome("succeeded", ref)


def _queue_profile(session: Session, version: ModelVersion, job_id: str) -> str | None:
    """The version's shift-monitoring profile, queued as an evaluation (kind ``profile``) on
    its validation split, in the registering transaction; None (with a job event) when it
    cannot be made here."""
    try:
        row = monitor.build_profile_evaluation(session, version, None, None)
    except ServiceError as exc:
        state.add_event(session, job_id, f"No monitoring profile: {exc}", level="warning")
        return None
    session.add(row)
    session.flush()
    evaluation_state.EVALUATIONS.add_event(session, row.id, "Monitoring profile queued")
    state.add_event(session, job_id, f"Monitoring profile queued as evaluation {row.id}")
    return row.id


def _abandon(
    ctx: WorkerContext, session: Session, lease: Lease, version: ModelVersion, key: str
) -> None:
    """The job stopped while it registered: cancelled under this attempt, its version must not
    go READY (it fails, and its copy goes); taken over, the version and its key are the new
    attempt's to finish, and this one touches neither."""
    if state.hold(session, lease.task_id, lease.attempt):
        registry.mark_failed(session, version, "the job stopped before registration finished")
        ctx.store.delete(key)
    else:
        lease.lose()


def _stopped(ctx: WorkerContext, lease: Lease, observer: JobObserver | None, where: str) -> Outcome:
    # The checkpoint just saved is published with the release, in one transaction (uploaded
    # first, to an object store).
    if observer is not None:
        observer.upload()
    stop = Stop(
        "Worker stopping: checkpointed, back in the queue",
        publish=None if observer is None else observer.publish,
        note="Training stopped",
        can_release=observer is not None,
    )
    return stopped(ctx, state.JOBS, lease, where, stop)


def _failed(ctx: WorkerContext, lease: Lease, code: str, message: str) -> Outcome:
    return failed(ctx, state.JOBS, lease, code, message)
