"""Creating, reading and cancelling jobs.

A job is validated completely before anything is stored (a bad request is a 422 naming the
field, and nothing is queued); it is committed, and only then is the task sent by name.
"""

from __future__ import annotations

import math
import secrets
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.config import RunConfig, from_dict, to_dict
from models.errors import ConfigError
from models.objective_registry import objective_spec
from service.backbones import Base, base_model, check_templates, dataset_descriptions
from service.datasets import service as datasets
from service.db.queries import required
from service.db.tables import Dataset, Job, JobCheckpoint, JobEvent, new_id
from service.descriptions import service as description_sets
from service.errors import InvalidRequest
from service.jobs import state
from service.jobs.schemas import (
    MAX_SEED,
    MAX_STEPS,
    TRAIN_KEY_OF,
    FineTuneRequest,
    Hyperparameters,
)
from service.settings import Settings
from service.status import JobStatus
from service.tasks.create import Sender, create_once, request_hash

# Where a core config key came from in the request, for 422s that name the request's field.
PARAM_OF_KEY = {
    **{f"train.{core}": f"hyperparameters.{name}" for name, core in TRAIN_KEY_OF.items()},
    "train.seed": "seed",
    "backbone.arch": "model",
}
# Each alpha is a full evaluation of every split; 101 is a 0.01 grid over [0, 1].
MAX_ALPHAS = 101
# DRM's lam weighs its regulariser against the task loss (1 by default); far larger values
# only drown the task loss, and 1e308 overflows the loss to inf at the first step.
MAX_LAM = 1000.0


def create(
    session: Session,
    settings: Settings,
    body: FineTuneRequest,
    send: Sender,
    scope: str,
    idempotency_key: str | None,
) -> tuple[Job, bool]:
    """The job and whether it was created now (False: an earlier request with the same key)."""
    make = partial(build, session, settings, body)
    return create_once(
        state.JOBS, session, make, request_hash(body), send, scope, idempotency_key, _validated
    )


def _validated(job: Job) -> str:
    return f"Validated dataset {job.dataset_id} and descriptions"


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
        "allow_weak_descriptions": body.allow_weak_descriptions,
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
    return state.JOBS.listed(session, select(Job), status, after, limit)


def cancel(session: Session, job_id: str) -> Job:
    job: Job = state.JOBS.cancel_or_refuse(session, get(session, job_id), f"job {job_id}")
    return job


def events(
    session: Session, job_id: str, after_seq: int, limit: int
) -> tuple[list[JobEvent], bool]:
    """Oldest first: a client follows a job by passing the last id it saw as ``after``."""
    return state.JOBS.events_after(session, job_id, after_seq, limit)


def checkpoints(session: Session, job_id: str) -> list[JobCheckpoint]:
    query = select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
    return list(session.scalars(query.order_by(JobCheckpoint.step_number.desc())))
