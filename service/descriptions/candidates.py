"""Pools of candidate descriptions: scored on a worker, a proposal accepted as a new version.

``POST /descriptions/score`` is an evaluation of kind ``candidates`` (as a diagnosis is one of
kind ``descriptions``): the pool (inline, a stored set of either status, and templates that name
each class), validated here against the dataset's classes and the size limit, is scored on the
dataset's training split by ``models.description_scoring`` on a worker. ``POST
/descriptions/accept`` turns a finished scoring's proposal (or a choice among its scored
candidates) into a new accepted version, in one insert.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.description_scoring import ScoringRule, template_candidates
from models.json_values import stable_hash
from service import backbones
from service.db.tables import Dataset, DescriptionSet, Evaluation
from service.descriptions import llm
from service.descriptions import service as description_sets
from service.descriptions.schemas import Descriptions, normalise
from service.errors import Conflict, InvalidRequest
from service.evaluations import service as evaluations
from service.evaluations.schemas import BackboneRequest
from service.schemas import NAME_PATTERN
from service.settings import Settings
from service.status import EvaluationStatus
from service.validation import Name

TRAIN_SPLIT = "train"
KIND = "candidates"
MAX_TEXT = 1000


class RuleOverrides(BaseModel):
    """Any of ``models.description_scoring.ScoringRule``'s fields; the rest keep its defaults."""

    model_config = ConfigDict(extra="forbid")

    top1_tolerance: float | None = Field(None, ge=0, le=1)
    accuracy_tolerance: float | None = Field(None, ge=0, le=1)
    margin_tolerance: float | None = Field(None, ge=0, le=1)
    group_tolerance: float | None = Field(None, ge=0, le=1)
    max_per_class: int | None = Field(None, ge=1, le=100)
    min_group_images: int | None = Field(None, ge=1, le=10_000)

    def rule(self) -> ScoringRule:
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        return dataclasses.replace(ScoringRule(), **given)


class ScoreRequest(BackboneRequest):
    """``POST /descriptions/score``: candidates per class, scored on the training images."""

    candidates: Descriptions | None = Field(
        None, description="{class: [candidate sentences]} (a class may also take one text)"
    )
    pool: str | None = Field(
        None,
        max_length=300,
        description="A stored description set (`desc-...`, `name` or `name/3`, either status) "
        "whose sentences join the candidates",
    )
    templates: bool = Field(
        False, description="Add candidates that name each class in photo templates"
    )
    reference: str | None = Field(
        None,
        max_length=300,
        description="An accepted description set the other classes are measured against "
        "(default: each class's template baseline)",
    )
    rule: RuleOverrides | None = None

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, value: Descriptions | None) -> dict[str, list[str]] | None:
        if value is None:
            return None
        cleaned = normalise(value)
        long = [c for c, texts in cleaned.items() if any(len(t) > MAX_TEXT for t in texts)]
        if long:
            raise ValueError(f"class(es) {long}: a candidate is over {MAX_TEXT} characters")
        return cleaned


class AcceptRequest(BaseModel):
    """``POST /descriptions/accept``: a finished scoring's proposal as a new accepted version."""

    model_config = ConfigDict(extra="forbid")

    evaluation: str = Field(min_length=1, max_length=40, description="A scoring's id (`eval-...`)")
    name: Name = Field(pattern=NAME_PATTERN, description="The set to add the version to")
    descriptions: dict[Annotated[str, Field(max_length=200)], list[str]] | None = Field(
        None,
        description="Per class, the scored candidates to keep instead of the proposal's (classes "
        "left out keep the proposal's)",
    )


def pool_of(
    session: Session, settings: Settings, body: ScoreRequest, dataset: Dataset
) -> tuple[dict[str, list[str]], str | None]:
    """The candidates per class of the dataset, and the stored pool's id; 422s naming unknown
    classes, classes without a candidate and a pool over ``max_score_candidates``."""
    merged: dict[str, list[str]] = {}
    pool_id = None
    sources: list[dict[str, list[str]]] = []
    if body.pool is not None:
        row = description_sets.resolve(session, body.pool, "pool", candidates=True)
        pool_id = row.id
        sources.append({k: list(v) for k, v in row.descriptions.items()})
    if body.candidates:
        sources.append(normalise(body.candidates))
    if body.templates:
        sources.append(template_candidates(dataset.classes))
    if not sources:
        raise InvalidRequest(
            "nothing to score: give candidates, a pool, or templates", "candidates"
        )
    for source in sources:
        for name, texts in source.items():
            merged.setdefault(name, [])
            merged[name] += [t for t in texts if t not in merged[name]]
    unknown = [c for c in merged if c not in dataset.classes]
    if unknown:
        raise InvalidRequest(
            f"unknown class(es) {unknown}: dataset {dataset.id} has {list(dataset.classes)}",
            "candidates",
        )
    missing = [c for c in dataset.classes if not merged.get(c)]
    if missing:
        raise InvalidRequest(
            f"no candidates for class(es) {missing} of dataset {dataset.id}: add some, or set "
            '"templates": true',
            "candidates",
        )
    total = sum(len(v) for v in merged.values())
    if total > settings.max_score_candidates:
        raise InvalidRequest(
            f"{total} candidates, at most {settings.max_score_candidates} per request "
            "(RCS_MAX_SCORE_CANDIDATES): score them in parts",
            "candidates",
        )
    return {c: merged[c] for c in dataset.classes}, pool_id


def build_scoring(
    session: Session,
    settings: Settings,
    body: ScoreRequest,
    drafted: DescriptionSet | None = None,
) -> Evaluation:
    """The scoring evaluation, validated; ``drafted``: a pool stored in the same transaction
    (``POST /descriptions/draft``), scored as given."""
    dataset = evaluations.visible_dataset(session, body.dataset)
    [split] = evaluations.choose_splits(dataset, [TRAIN_SPLIT], "dataset")
    pool_id: str | None
    if drafted is not None:
        pool, pool_id = dict(drafted.descriptions), drafted.id
    else:
        pool, pool_id = pool_of(session, settings, body, dataset)
    reference = None
    if body.reference is not None:
        row = description_sets.resolve(session, body.reference, "reference")
        reference = backbones.dataset_descriptions(row.descriptions, dataset, "reference")
    base = backbones.base_model(session, settings, body.model, body.pretrained)
    rule = body.rule.rule() if body.rule else ScoringRule()
    config = {
        "head": {},
        "description_set": pool_id,
        "candidates": pool,
        "reference": reference,
        "rule": dataclasses.asdict(rule),
    }
    return evaluations.backbone_evaluation(session, KIND, base, body, dataset, split, config)


def scored(session: Session, evaluation_id: str) -> Evaluation:
    """A finished scoring: 422 on ``evaluation`` for anything else, 409 while it is not done."""
    row = session.get(Evaluation, evaluation_id)
    if row is None or row.kind != KIND:
        raise InvalidRequest(f"no scoring of candidates {evaluation_id!r}", "evaluation")
    if row.status != EvaluationStatus.SUCCEEDED or row.results is None:
        raise Conflict(
            f"scoring {evaluation_id} is {row.status}: only a succeeded one can be accepted",
            "evaluation",
        )
    return row


def accept(session: Session, body: AcceptRequest) -> DescriptionSet:
    """A new accepted version: the scoring's proposal, with ``body.descriptions``'s choices."""
    row = scored(session, body.evaluation)
    scores = row.results["scores"] if row.results else {}
    chosen = {c: list(texts) for c, texts in scores["proposed"].items()}
    for name, texts in (body.descriptions or {}).items():
        known = {item["text"] for item in scores["per_class"].get(name, {}).get("candidates", [])}
        if name not in chosen:
            raise InvalidRequest(
                f"unknown class {name!r}: the scoring's classes are {list(chosen)}",
                "descriptions",
            )
        unscored = [t for t in texts if t not in known]
        if not texts or unscored:
            what = f"texts it did not score: {unscored}" if unscored else "no text"
            raise InvalidRequest(f"class {name!r}: {what}", "descriptions")
        chosen[name] = list(dict.fromkeys(texts))
    provenance: dict[str, Any] = {
        "source": "proposal",
        "evaluation": row.id,
        "pool": row.config.get("description_set"),
        "dataset": row.dataset_id,
        "model": row.model,
        "rule": row.config.get("rule"),
        "proposed_concept_top1": scores.get("proposed_concept_top1"),
        "edited": sorted(body.descriptions or {}),
    }
    return description_sets.create(
        session, body.name, chosen, description_sets.ACCEPTED, provenance
    )


class DraftRequest(BackboneRequest):
    """``POST /descriptions/draft``: candidates drafted by the operator's language model for
    the dataset's classes, stored as a pool and scored as ``POST /descriptions/score``."""

    name: Name = Field(pattern=NAME_PATTERN, description="The set to store the drafts under")
    per_class: int = Field(5, ge=1, le=20, description="Descriptions asked for per class")
    domain: str | None = Field(
        None, max_length=500, description="A short note on the images, e.g. `camera-trap photos`"
    )
    rule: RuleOverrides | None = None


def draft_and_score(
    session: Session,
    settings: Settings,
    body: DraftRequest,
    send: Callable[[str], None],
    scope: str,
) -> tuple[DescriptionSet, Evaluation]:
    """Validate everything the model's answer does not change, ask the model, then store the
    drafts (a pool of status ``candidates`` with its provenance) and their scoring in one
    transaction: a failed draft stores nothing."""
    dataset = evaluations.visible_dataset(session, body.dataset)
    evaluations.choose_splits(dataset, [TRAIN_SPLIT], "dataset")
    asked = len(dataset.classes) * body.per_class
    if asked > settings.max_score_candidates:
        raise InvalidRequest(
            f"{len(dataset.classes)} classes x {body.per_class} = {asked} candidates, at most "
            f"{settings.max_score_candidates} (RCS_MAX_SCORE_CANDIDATES)",
            "per_class",
        )
    backbones.base_model(session, settings, body.model, body.pretrained)
    # After the request's own checks: a request that is wrong anyway gets its 422, not a 501.
    llm.configured(settings)
    drafted = llm.draft(settings, list(dataset.classes), body.per_class, body.domain)
    provenance = {
        "source": "draft",
        "model": drafted.model,
        "prompt": drafted.prompt,
        "drafted_at": drafted.drafted_at,
        "dataset": dataset.id,
    }
    score = ScoreRequest(
        dataset=body.dataset,
        model=body.model,
        pretrained=body.pretrained,
        metadata=body.metadata,
        candidates=None,
        pool=None,
        templates=False,
        reference=None,
        rule=body.rule,
    )
    made: list[DescriptionSet] = []

    def make() -> Evaluation:
        pool = description_sets.build_version(
            session, body.name, drafted.descriptions, description_sets.CANDIDATES, provenance
        )
        session.add(pool)
        made.append(pool)
        return build_scoring(session, settings, score, drafted=pool)

    digest = stable_hash({"draft": body.model_dump(mode="json"), "at": drafted.drafted_at})
    try:
        row, _ = evaluations.store(session, make, digest, send, scope, None)
    except IntegrityError:
        session.rollback()
        raise Conflict(
            f"another version of {body.name!r} was stored at the same moment; retry", "name"
        ) from None
    return made[0], row
