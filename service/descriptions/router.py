"""Class descriptions: named sets, each POST adding a new immutable version; pools of candidates
scored on a worker, drafted by the operator's language model, and accepted as new versions."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel

from models.json_values import stable_hash
from service.auth.deps import AnyKey, TrainKey
from service.deps import Ctx, Db, Page
from service.descriptions import candidates, service
from service.descriptions.candidates import AcceptRequest, DraftRequest, ScoreRequest
from service.descriptions.schemas import DescriptionSetCreate, DescriptionSetObject, normalise
from service.evaluations import service as evaluations
from service.evaluations.respond import created_evaluation, evaluation_object, evaluation_sender
from service.evaluations.schemas import EvaluationObject
from service.schemas import ERROR_RESPONSES, ListResponse

router = APIRouter(prefix="/descriptions", tags=["descriptions"], responses=ERROR_RESPONSES)
IdempotencyKey = Annotated[str | None, Header(max_length=255)]


@router.post("", response_model=DescriptionSetObject)
def create_set(body: DescriptionSetCreate, db: Db, _: TrainKey) -> DescriptionSetObject:
    """Store a new version of the named description set (``status: candidates``: a pool to
    score, which no job trains on)."""
    return DescriptionSetObject.of(
        service.create(db, body.name, normalise(body.descriptions), body.status)
    )


@router.get("", response_model=ListResponse[DescriptionSetObject])
def list_sets(
    db: Db, _: AnyKey, page: Page, name: str | None = None
) -> ListResponse[DescriptionSetObject]:
    rows, more = service.list_all(db, name, page.after, page.limit)
    return ListResponse(data=[DescriptionSetObject.of(r) for r in rows], has_more=more)


@router.post("/score", response_model=EvaluationObject)
def score_candidates(
    body: ScoreRequest,
    ctx: Ctx,
    db: Db,
    key: TrainKey,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> EvaluationObject:
    """Score candidate descriptions per class with the frozen backbone on the dataset's training
    images, on a worker (an evaluation of kind ``candidates``), and propose a set: ``results``
    holds every candidate's scores, the dropped ones' reasons and the proposal."""
    make = partial(candidates.build_scoring, db, ctx.settings, body)
    digest = stable_hash({"score": body.model_dump(mode="json")})
    row, created = evaluations.store(
        db, make, digest, evaluation_sender(ctx), key.key_id, idempotency_key
    )
    return created_evaluation(row, created, key, response)


class DraftObject(BaseModel):
    object: Literal["description_draft"] = "description_draft"
    # The drafts, stored as a pool (status ``candidates``) with the model, prompt and time.
    description_set: DescriptionSetObject
    # Their scoring, queued: accept its proposal to train on them.
    evaluation: EvaluationObject


@router.post("/draft", response_model=DraftObject)
def draft_candidates(body: DraftRequest, ctx: Ctx, db: Db, key: TrainKey) -> DraftObject:
    """Ask the operator's language model (``RCS_LLM_*``; 501 without it) for core-feature
    descriptions of the dataset's classes, store them as a pool of candidates with their
    provenance, and queue their scoring; nothing is stored when the model fails."""
    pool, row = candidates.draft_and_score(
        db, ctx.settings, body, evaluation_sender(ctx), key.key_id
    )
    return DraftObject(
        description_set=DescriptionSetObject.of(pool), evaluation=evaluation_object(row, key)
    )


@router.post("/accept", response_model=DescriptionSetObject)
def accept_proposal(body: AcceptRequest, db: Db, _: TrainKey) -> DescriptionSetObject:
    """A succeeded scoring's proposed set (or a choice among its scored candidates) as a new
    accepted version of ``name``, with its provenance; one insert, nothing partial."""
    return DescriptionSetObject.of(candidates.accept(db, body))


@router.get("/{set_id}", response_model=DescriptionSetObject)
def get_set(set_id: str, db: Db, _: AnyKey) -> DescriptionSetObject:
    return DescriptionSetObject.of(service.get(db, set_id))
