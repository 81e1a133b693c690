"""Creating, reading, listing and cancelling evaluations.

An evaluation is validated completely before it is stored (the model resolved to one READY
version, the dataset present, the splits its own, the classes the model's), committed, and only
then sent to a worker by name, as a job is. A description diagnosis (kind ``descriptions``) is
one too: a backbone and a description set instead of a version, validated as a job's are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.config import to_dict
from models.json_values import stable_hash
from service import backbones
from service.db.queries import required
from service.db.tables import Dataset, Evaluation, EvaluationEvent, ModelVersion, new_id
from service.descriptions import service as description_sets
from service.errors import InvalidRequest
from service.evaluations import state
from service.evaluations.schemas import BackboneRequest, DiagnoseRequest, EvaluationRequest
from service.registry import service as registry
from service.settings import Settings
from service.status import EvaluationStatus
from service.tasks.create import Sender, create_once, request_hash

TRAIN_SPLIT = "train"
# Class names quoted in a 422: enough to fix a typo, not a 1000-class dump.
MAX_LISTED = 20


def create(
    session: Session,
    body: EvaluationRequest,
    send: Sender,
    scope: str,
    idempotency_key: str | None,
) -> tuple[Evaluation, bool]:
    """The evaluation and whether it was created now (False: an earlier request, same key)."""
    return store(
        session, partial(build, session, body), request_hash(body), send, scope, idempotency_key
    )


def create_diagnosis(
    session: Session,
    settings: Settings,
    set_ref: str,
    body: DiagnoseRequest,
    send: Sender,
    scope: str,
    idempotency_key: str | None,
) -> tuple[Evaluation, bool]:
    """A description diagnosis (an evaluation of kind ``descriptions``), as ``create``."""
    # The set is named by the URL: the same body on another set is another request.
    digest = stable_hash({"descriptions": set_ref, **body.model_dump(mode="json")})
    make = partial(build_diagnosis, session, settings, set_ref, body)
    return store(session, make, digest, send, scope, idempotency_key)


def store(
    session: Session,
    make: Callable[[], Evaluation],
    digest: str,
    send: Sender,
    scope: str,
    idempotency_key: str | None,
) -> tuple[Evaluation, bool]:
    return create_once(
        state.EVALUATIONS, session, make, digest, send, scope, idempotency_key, _validated
    )


def _validated(row: Evaluation) -> str:
    what = row.model
    if row.kind == "descriptions":
        what = f"descriptions {row.config['description_set']} on {row.model}"
    elif row.kind == "candidates":
        count = sum(len(texts) for texts in row.config["candidates"].values())
        what = f"{count} candidate descriptions on {row.model}"
    return f"Validated {what} against dataset {row.dataset_id}"


def build(session: Session, body: EvaluationRequest) -> Evaluation:
    version = registry.resolve(session, body.model, "model")
    dataset = visible_dataset(session, body.dataset)
    splits = choose_splits(dataset, body.splits)
    check_classes(model_classes(version), dataset)
    return Evaluation(
        id=new_id("eval"),
        kind="model",
        status=EvaluationStatus.QUEUED,
        model=f"{version.name}/{version.version}",
        model_reference=body.model,
        model_name=version.name,
        model_version=version.version,
        version_id=version.id,
        model_digest=version.digest,
        dataset_id=dataset.id,
        splits=splits,
        config={},
        metadata_=dict(body.metadata),
        progress_step=0,
        progress_total=len(splits),
        attempts=0,
    )


def build_diagnosis(
    session: Session, settings: Settings, set_ref: str, body: DiagnoseRequest
) -> Evaluation:
    """Validated as a job's backbone and descriptions are (``service.backbones``); the
    worker reads what it needs from ``config``."""
    description_set = description_sets.resolve(session, set_ref, None)
    dataset = visible_dataset(session, body.dataset)
    [split] = choose_splits(dataset, [body.split], "split")
    descriptions = backbones.dataset_descriptions(description_set.descriptions, dataset, "dataset")
    base = backbones.base_model(session, settings, body.model, body.pretrained)
    if body.head is not None:
        backbones.check_templates(body.head.templates)
    config: dict[str, Any] = {
        "head": to_dict(body.head) if body.head else {},
        "description_set": description_set.id,
        "descriptions": descriptions,
    }
    if body.compare_to is not None:
        other = description_sets.resolve(session, body.compare_to, "compare_to")
        config["compare"] = {
            "description_set": other.id,
            "descriptions": backbones.dataset_descriptions(
                other.descriptions, dataset, "compare_to"
            ),
        }
    return backbone_evaluation(session, "descriptions", base, body, dataset, split, config)


def backbone_evaluation(
    session: Session,
    kind: str,
    base: backbones.Base,
    body: BackboneRequest,
    dataset: Dataset,
    split: str,
    config: dict[str, Any],
) -> Evaluation:
    """An evaluation of a frozen backbone (not a registered version) on one split: a
    diagnosis, or a scoring of candidate descriptions; ``config`` is what the worker reads."""
    version = session.get(ModelVersion, base.version_id) if base.version_id else None
    return Evaluation(
        id=new_id("eval"),
        kind=kind,
        status=EvaluationStatus.QUEUED,
        model=base.model,
        model_reference=body.model,
        # A registry backbone: the version read, checked again on the worker as a model's.
        model_name=version.name if version else None,
        model_version=version.version if version else None,
        version_id=version.id if version else None,
        model_digest=version.digest if version else None,
        dataset_id=dataset.id,
        splits=[split],
        config={"backbone": base.backbone, **config},
        metadata_=dict(body.metadata),
        progress_step=0,
        progress_total=1,
        attempts=0,
    )


def visible_dataset(session: Session, dataset_id: str) -> Dataset:
    """The dataset ``dataset_id`` names; a 422 on ``dataset`` saying whether it never existed
    or was deleted (its row stays, hidden, for what used it)."""
    row = required(session.get(Dataset, dataset_id), f"no dataset {dataset_id!r}", "dataset")
    if row.deleted_at is not None:
        raise InvalidRequest(f"dataset {dataset_id!r} was deleted", "dataset")
    return row


def choose_splits(
    dataset: Dataset, asked: Sequence[str] | None, param: str = "splits"
) -> list[str]:
    available = list(dataset.counts)
    if asked is None:
        # A dataset is registered with a train split; a shift set is read off its others.
        held_out = [s for s in available if s != TRAIN_SPLIT]
        return held_out or available
    repeated = sorted({s for s in asked if list(asked).count(s) > 1})
    if repeated:
        raise InvalidRequest(f"split(s) {repeated} are listed more than once", param)
    unknown = [s for s in asked if s not in available]
    if unknown:
        raise InvalidRequest(
            f"dataset {dataset.id} has no split(s) {unknown} (it has {available})", param
        )
    empty = [s for s in asked if not sum(dataset.counts[s].values())]
    if empty:
        raise InvalidRequest(f"split(s) {empty} of dataset {dataset.id} have no images", param)
    return list(asked)


def model_classes(version: ModelVersion) -> list[str]:
    return [str(c) for c in (version.card or {}).get("classnames", [])]


def check_classes(model: Sequence[str], dataset: Dataset) -> None:
    """The dataset's classes must be the model's, in any order (labels are matched by name):
    a 422 naming the classes the dataset lacks and those the model does not know."""
    missing = [c for c in model if c not in set(dataset.classes)]
    extra = [c for c in dataset.classes if c not in set(model)]
    if not missing and not extra:
        return
    parts = []
    if missing:
        parts.append(f"missing the model's class(es) {_listed(missing)}")
    if extra:
        parts.append(f"has class(es) the model does not know: {_listed(extra)}")
    raise InvalidRequest(
        f"dataset {dataset.id}'s classes do not match the model's: it is {'; it '.join(parts)}",
        "dataset",
    )


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"{shown} (and {more} more)" if more > 0 else shown


def get(session: Session, evaluation_id: str) -> Evaluation:
    return required(session.get(Evaluation, evaluation_id), f"no evaluation {evaluation_id!r}")


def model_filter(session: Session, text: str) -> tuple[str, int | None]:
    """What ``?model=`` selects: ``name/3`` that version, ``name@alias`` the version the alias
    names now, ``name`` every version of the model. Versions since deleted still match: their
    evaluations are kept."""
    ref = registry.parse_ref(text)
    if ref is None:
        raise InvalidRequest(
            f"{text!r} is not a model reference (name, name/3 or name@alias)", "model"
        )
    # Evaluations keep the version's stored spelling: ``M1@CHAMP`` selects those of m1's champ.
    ref = registry.stored_ref(session, ref, "model")
    return ref.name, ref.version


def list_evaluations(
    session: Session,
    after: str | None,
    limit: int,
    *,
    model: tuple[str, int | None] | None = None,
    dataset: str | None = None,
    status: EvaluationStatus | None = None,
) -> tuple[list[Evaluation], bool]:
    """Newest first."""
    query = select(Evaluation)
    if model is not None:
        name, version = model
        query = query.where(Evaluation.model_name == name)
        if version is not None:
            query = query.where(Evaluation.model_version == version)
    if dataset is not None:
        query = query.where(Evaluation.dataset_id == dataset)
    return state.EVALUATIONS.listed(session, query, status, after, limit)


def cancel(session: Session, evaluation_id: str) -> Evaluation:
    name = f"evaluation {evaluation_id}"
    row: Evaluation = state.EVALUATIONS.cancel_or_refuse(session, get(session, evaluation_id), name)
    return row


def events(
    session: Session, evaluation_id: str, after_seq: int, limit: int
) -> tuple[list[EvaluationEvent], bool]:
    """Oldest first: a client follows by passing the last id it saw as ``after``."""
    return state.EVALUATIONS.events_after(session, evaluation_id, after_seq, limit)
