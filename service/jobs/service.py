"""Creating, reading and cancelling jobs.

A job is validated completely before anything is stored (a bad request is a 422 naming the
field, and nothing is queued); it is committed, and only then is the task sent by name.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.backbone import (
    LOCAL_DIR,
    OFFLINE_BACKBONE,
    OPEN_CLIP_CONFIG,
    WEIGHT_SUFFIXES,
    list_architectures,
    list_pretrained,
    looks_like_path,
)
from models.config import RunConfig, from_dict, to_dict
from models.data import check_descriptions
from models.errors import ConfigError, DataError
from models.json_values import stable_hash
from models.objective_registry import objective_spec
from models.templates import resolve_templates
from service.datasets import service as datasets
from service.db.queries import page, required
from service.db.tables import Dataset, Job, JobCheckpoint, JobEvent, new_id
from service.descriptions import service as description_sets
from service.errors import Conflict, InvalidRequest, Unavailable
from service.jobs import state, streams
from service.jobs.schemas import (
    MAX_SEED,
    MAX_STEPS,
    TRAIN_KEY_OF,
    FineTuneRequest,
    Hyperparameters,
)
from service.paths import under_roots
from service.registry import service as registry
from service.settings import Settings
from service.status import TERMINAL, JobStatus

# Where a core config key came from in the request, for 422s that name the request's field.
PARAM_OF_KEY = {
    **{f"train.{core}": f"hyperparameters.{name}" for name, core in TRAIN_KEY_OF.items()},
    "train.seed": "seed",
    "backbone.arch": "model",
}
REGISTRY_PREFIX = "models:/"
HUB_PREFIX = "hf-hub:"
# Each alpha is a full evaluation of every split; 101 is a 0.01 grid over [0, 1].
MAX_ALPHAS = 101
# DRM's lam weighs its regulariser against the task loss (1 by default); far larger values
# only drown the task loss, and 1e308 overflows the loss to inf at the first step.
MAX_LAM = 1000.0
# What huggingface_hub reads as true in HF_HUB_OFFLINE.
_TRUE = {"1", "on", "yes", "true"}
Sender = Callable[[str], None]


@dataclass(frozen=True)
class Base:
    model: str
    backbone: dict[str, Any]
    version_id: int | None
    pretrained: bool


def request_hash(body: FineTuneRequest) -> str:
    return stable_hash(body.model_dump(mode="json"))


def find_idempotent(session: Session, scope: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.idempotency_scope == scope, Job.idempotency_key == key)
    )


def _same_request(job: Job, digest: str) -> Job:
    if job.request_hash != digest:
        raise Conflict("Idempotency-Key was used with a different request", "Idempotency-Key")
    return job


def create(
    session: Session,
    settings: Settings,
    body: FineTuneRequest,
    send: Sender,
    scope: str,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """The job and whether it was created now (False: an earlier request with the same key)."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = find_idempotent(session, scope, idempotency_key)
        if existing is not None:
            return _same_request(existing, digest), False
    job = build(session, settings, body)
    # Locked for this transaction before anything is written: a concurrent DELETE of the
    # dataset then either sees this job (409) or has committed first (422 here).
    datasets.hold_live(session, job.dataset_id, "dataset")
    job.idempotency_scope, job.idempotency_key, job.request_hash = scope, idempotency_key, digest
    session.add(job)
    state.add_event(session, job.id, f"Validated dataset {job.dataset_id} and descriptions")
    state.add_event(session, job.id, "Job queued")
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its job.
        session.rollback()
        if idempotency_key is None:
            raise
        winner = find_idempotent(session, scope, idempotency_key)
        if winner is None:
            raise
        return _same_request(winner, digest), False
    try:
        send(job.id)
    except Exception as exc:  # any broker failure: the job must not stay queued forever
        state.fail(session, job.id, "queue_unavailable", f"could not queue the job: {exc}")
        raise Unavailable("the task queue is unavailable; the job was not queued") from exc
    return job, True


def build(session: Session, settings: Settings, body: FineTuneRequest) -> Job:
    check_values(body)
    dataset = datasets.get(session, body.dataset, param="dataset")
    splits = _splits(body, dataset)
    descriptions, set_id = _descriptions(session, body, dataset)
    base = base_model(session, settings, body.model, body.pretrained)
    seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    hyper = resolve_hyperparameters(body.hyperparameters, _train_count(dataset, splits[0]), base)
    if body.head is not None:
        check_templates(body.head.templates)
    run = run_config(settings, body, dataset, splits, base, hyper, seed)
    return Job(
        id=new_id("ftjob"),
        status=JobStatus.QUEUED,
        model=base.model,
        method={"type": body.method.type, "objective": to_dict(run.objective)},
        hyperparameters=hyper,
        wise_ft=to_dict(run.wise),
        seed=seed,
        metadata_=dict(body.metadata),
        registered_model_name=body.registered_model_name,
        dataset_id=dataset.id,
        description_set_id=set_id,
        descriptions=descriptions,
        run_config=to_dict(run),
        base_version_id=base.version_id,
        progress_step=0,
        progress_total=hyper["max_steps"],
        attempts=0,
    )


def check_values(body: FineTuneRequest) -> None:
    """What field bounds cannot say: every number finite, lam sane, the alpha list bounded."""
    _check_finite(body.model_dump(mode="python"), "")
    if body.method.objective is not None and body.method.objective.lam > MAX_LAM:
        lam = body.method.objective.lam
        raise InvalidRequest(
            f"lam must be at most {MAX_LAM:g}, got {lam:g}", "method.objective.lam"
        )
    if body.wise_ft is not None and len(body.wise_ft.alphas) > MAX_ALPHAS:
        count = len(body.wise_ft.alphas)
        raise InvalidRequest(
            f"at most {MAX_ALPHAS} alphas (each is a full evaluation), got {count}",
            "wise_ft.alphas",
        )


def _check_finite(value: Any, param: str) -> None:
    # JSON bodies may carry Infinity and NaN (and 1e400 parses as inf): no setting wants one.
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{param} must be a finite number, got {value}", param)
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{param}.{key}" if param else str(key))
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(item, param)


def _splits(body: FineTuneRequest, dataset: Dataset) -> tuple[str, str, list[str]]:
    if body.splits.validation == body.splits.train:
        # Selecting alpha on the images it was trained on picks the most overfit model.
        raise InvalidRequest(
            "the validation split must differ from the training split", "splits.validation"
        )
    if body.splits.ood and body.splits.train in body.splits.ood:
        raise InvalidRequest("the training split cannot be an OOD split", "splits.ood")
    available = list(dataset.counts)
    for field, name in (("train", body.splits.train), ("validation", body.splits.validation)):
        if name not in available:
            raise InvalidRequest(
                f"the dataset has no split {name!r} ({available})", f"splits.{field}"
            )
    ood = body.splits.ood
    if ood is None:
        ood = [s for s in available if s.startswith("ood")]
    missing = [s for s in ood if s not in available]
    if missing:
        raise InvalidRequest(f"the dataset has no split(s) {missing} ({available})", "splits.ood")
    return body.splits.train, body.splits.validation, ood


def _train_count(dataset: Dataset, split: str) -> int:
    return int(sum(dataset.counts[split].values()))


def _descriptions(
    session: Session, body: FineTuneRequest, dataset: Dataset
) -> tuple[dict[str, list[str]] | None, str | None]:
    value, set_id = body.descriptions, None
    if isinstance(value, str):
        row = description_sets.resolve(session, value, "descriptions")
        value, set_id = dict(row.descriptions), row.id
    if value is None:
        if objective_spec(body.method.type).needs_descriptions:
            method = body.method.type
            raise InvalidRequest(f"the {method} method needs class descriptions", "descriptions")
        return None, None
    return dataset_descriptions(value, dataset, "descriptions"), set_id


def dataset_descriptions(
    value: Mapping[str, str | Sequence[str]], dataset: Dataset, param: str
) -> dict[str, list[str]]:
    """``value`` as {class: [texts]}, one for each of the dataset's classes: a 422 on ``param``
    naming the classes without a description and the descriptions of unknown classes."""
    texts = {k: [v] if isinstance(v, str) else list(v) for k, v in value.items()}
    try:
        check_descriptions(dataset.classes, texts)
    except DataError as exc:
        raise InvalidRequest(f"{exc} (dataset {dataset.id})", param) from exc
    return texts


def base_model(session: Session, settings: Settings, model: str, pretrained: str | None) -> Base:
    """The backbone ``model`` names: a registry version (``models:/name[/3|@alias]``) or what
    ``check_backbone`` allows."""
    if model.startswith(REGISTRY_PREFIX):
        if pretrained is not None:
            raise InvalidRequest("a registry model carries its own weights", "pretrained")
        version = registry.resolve(session, model, "model")
        ref = f"{REGISTRY_PREFIX}{version.name}/{version.version}"
        # The worker swaps the reference for a local copy of the artifact folder.
        return Base(ref, {"arch": ref, "pretrained": None}, version.id, True)
    backbone = check_backbone(settings, model, pretrained)
    arch = backbone["arch"]
    # Everything but a bare architecture carries trained weights (the auto lr keeps them).
    has_weights = backbone["pretrained"] is not None or arch not in list_architectures()
    return Base(model, backbone, None, has_weights)


def check_backbone(settings: Settings, model: str, pretrained: str | None) -> dict[str, Any]:
    """The one place that says which backbones a job may start from; returns the job's
    ``backbone`` config (a server folder as its real path, so a link swapped later cannot
    redirect it).

    Accepted, as by the library: an open_clip architecture with an optional pretrained tag (or a
    weights file under an allowed model root), the offline backbone, an open_clip model folder
    (``local-dir:/path`` or a plain path) under an allowed model root, and ``hf-hub:`` names
    where the server allows downloads. Whether the offline backbone is built is known only on
    the worker: a job there without it fails with the command that builds it.
    """
    if model.startswith(HUB_PREFIX):
        if not hub_models_allowed(settings):
            raise InvalidRequest(
                f"{model!r}: models from the Hugging Face Hub are not allowed on this server "
                "(RCS_ALLOW_HUB_MODELS is off, or HF_HUB_OFFLINE is set)",
                "model",
            )
        if pretrained is not None:
            raise InvalidRequest("an hf-hub: model carries its own weights", "pretrained")
        return {"arch": model, "pretrained": None}
    if model == OFFLINE_BACKBONE or model.startswith(LOCAL_DIR) or looks_like_path(model):
        if pretrained is not None:
            raise InvalidRequest(f"{model!r} carries its own weights", "pretrained")
        if model == OFFLINE_BACKBONE:
            return {"arch": model, "pretrained": None}
        return {"arch": LOCAL_DIR + str(model_folder(settings, model)), "pretrained": None}
    if model not in list_architectures():
        raise InvalidRequest(
            f"unknown model {model!r}: expected an open_clip architecture, "
            f"{OFFLINE_BACKBONE!r}, a model folder ('{LOCAL_DIR}/path' under "
            f"RCS_ALLOWED_MODEL_ROOTS) or '{REGISTRY_PREFIX}name[/version|@alias]'",
            "model",
        )
    if pretrained is not None and looks_like_path(pretrained):
        weights = under_roots(
            settings.allowed_model_roots,
            pretrained,
            "pretrained",
            "model",
            "RCS_ALLOWED_MODEL_ROOTS",
        )
        if not weights.is_file():
            raise InvalidRequest(f"{pretrained} is not a weights file", "pretrained")
        return {"arch": model, "pretrained": str(weights)}
    if pretrained is not None and pretrained not in list_pretrained(model):
        tags = list_pretrained(model)
        raise InvalidRequest(f"{model} has no pretrained tag {pretrained!r} ({tags})", "pretrained")
    return {"arch": model, "pretrained": pretrained}


def model_folder(settings: Settings, model: str) -> Path:
    """An open_clip model folder under an allowed model root, with its config and weights."""
    folder = under_roots(
        settings.allowed_model_roots,
        model.removeprefix(LOCAL_DIR),
        "model",
        "model",
        "RCS_ALLOWED_MODEL_ROOTS",
    )
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise InvalidRequest(
            f"{model}: not an open_clip model folder (no {OPEN_CLIP_CONFIG})", "model"
        )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        raise InvalidRequest(
            f"{model}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) in the folder", "model"
        )
    return folder


def hub_models_allowed(settings: Settings) -> bool:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    return settings.allow_hub_models and not offline


def check_templates(templates: str | Sequence[str]) -> None:
    # The core resolves a template set's name only when the worker builds the heads.
    try:
        resolve_templates(templates)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), "head.templates") from exc


def resolve_hyperparameters(hp: Hyperparameters, n_train: int, base: Base) -> dict[str, Any]:
    """Turn every "auto" into a number, from the training-set size."""
    if hp.batch_size != "auto" and hp.batch_size > n_train:
        raise InvalidRequest(
            f"batch_size {hp.batch_size} exceeds the {n_train} training images",
            "hyperparameters.batch_size",
        )
    batch = hp.batch_size if hp.batch_size != "auto" else _auto_batch(n_train)
    steps_per_epoch = max(1, n_train // batch)
    # Small sets get enough passes for ~100 steps; large ones at most the FLYP-like 20 epochs.
    epochs = hp.n_epochs if hp.n_epochs != "auto" else min(20, math.ceil(100 / steps_per_epoch))
    total = hp.max_steps if hp.max_steps != "auto" else epochs * steps_per_epoch
    if total > MAX_STEPS:
        raise InvalidRequest(
            f"{epochs} epochs of {steps_per_epoch} steps exceed {MAX_STEPS} steps; "
            "set max_steps or fewer n_epochs",
            "hyperparameters.n_epochs",
        )
    # FLYP's 1e-5 keeps pretrained features; a random-init backbone has none to keep.
    lr = hp.learning_rate if hp.learning_rate != "auto" else (1e-5 if base.pretrained else 5e-4)
    warmup = hp.warmup_steps if hp.warmup_steps != "auto" else min(500, total // 10)
    if warmup > 0 and warmup >= total:
        raise InvalidRequest(
            f"warmup_steps {warmup} must be shorter than the run ({total} steps)",
            "hyperparameters.warmup_steps",
        )
    return {
        "n_epochs": epochs,
        "batch_size": batch,
        "learning_rate": lr,
        "weight_decay": hp.weight_decay if hp.weight_decay != "auto" else 0.1,
        "warmup_steps": warmup,
        "max_steps": total,
    }


def _auto_batch(n_train: int) -> int:
    target = max(2, min(256, n_train // 4))
    return 1 << (target.bit_length() - 1)


def run_config(
    settings: Settings,
    body: FineTuneRequest,
    dataset: Dataset,
    splits: tuple[str, str, list[str]],
    base: Base,
    hyper: dict[str, Any],
    seed: int,
) -> RunConfig:
    objective: dict[str, Any] = to_dict(body.method.objective) if body.method.objective else {}
    data = {
        "path": dataset.path,
        "train_split": splits[0],
        "val_split": splits[1],
        "ood_splits": splits[2],
        # Every image was decoded at registration; the worker re-checks the fingerprint.
        "check_images": False,
    }
    train = {
        **{core: hyper[name] for name, core in TRAIN_KEY_OF.items()},
        "seed": seed,
        "checkpoint_every": settings.checkpoint_every,
    }
    raw = {
        "backbone": base.backbone,
        "objective": {**objective, "name": body.method.type},
        "data": data,
        "train": train,
        "head": to_dict(body.head) if body.head else {},
        "wise": to_dict(body.wise_ft) if body.wise_ft else {},
    }
    try:
        return from_dict(RunConfig, raw)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), PARAM_OF_KEY.get(exc.key or "", exc.key)) from exc


def get(session: Session, job_id: str) -> Job:
    return required(session.get(Job, job_id), f"no fine-tuning job {job_id!r}")


def list_jobs(
    session: Session, after: str | None, limit: int, status: JobStatus | None
) -> tuple[list[Job], bool]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    if after is not None:
        query = query.where(Job.id < after)
    return page(session, query.order_by(Job.id.desc()), limit)


def cancel(session: Session, job_id: str) -> Job:
    job = get(session, job_id)
    if job.status in TERMINAL:
        raise Conflict(f"job {job_id} already {job.status}; terminal states never change")
    if not state.cancel(session, job_id):
        session.refresh(job)
        raise Conflict(f"job {job_id} already {job.status}; terminal states never change")
    session.refresh(job)
    return job


def parse_event_cursor(after: str | None, param: str = "after") -> int:
    """A job event id (``ftevent-12``, or its number) as the sequence number to read after."""
    return streams.parse_event_cursor(after, "ftevent-", param)


def events(
    session: Session, job_id: str, after_seq: int, limit: int
) -> tuple[list[JobEvent], bool]:
    """Oldest first: a client follows a job by passing the last id it saw as ``after``."""
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
    )
    return page(session, query, limit)


def checkpoints(session: Session, job_id: str) -> list[JobCheckpoint]:
    query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    return list(session.scalars(query.order_by(JobCheckpoint.step_number.desc())))
