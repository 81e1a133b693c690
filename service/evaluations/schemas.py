from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.db.tables import Evaluation
from service.schemas import StrictHead
from service.status import EvaluationStatus
from service.tasks.schemas import TaskEventObject

# The head ``/predict`` serves: the summary reports it; ``results`` has every head.
SERVED_HEAD = "dual"
# What a description diagnosis measures, and so what its summary reports.
CONCEPT_HEAD = "concept"
MAX_SPLITS = 64
MAX_METADATA = 16


class _WithMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metadata: dict[str, Annotated[str, Field(max_length=512)]] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} metadata pairs")
        if any(not 0 < len(k) <= 64 for k in value):
            raise ValueError("metadata keys must be 1 to 64 characters")
        return value


class EvaluationRequest(_WithMetadata):
    model: str = Field(
        min_length=1,
        max_length=300,
        description="A registered version: `name` (latest READY), `name/3` or `name@alias` "
        "(`models:/` prefix optional); resolved to one version when the evaluation is created",
    )
    dataset: str = Field(min_length=1, max_length=40, description="Id of a registered dataset")
    splits: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SPLITS,
        description="Splits to evaluate; default: every split but `train` (all of them when "
        "the dataset has nothing else)",
    )


class BackboneRequest(_WithMetadata):
    """A frozen backbone measured on a registered dataset's images, before any training."""

    dataset: str = Field(min_length=1, max_length=40, description="Id of a registered dataset")
    model: str = Field(
        min_length=1,
        max_length=300,
        description="A backbone as `POST /finetune` takes it: an open_clip architecture (with "
        "`pretrained`), the offline backbone, an allowed model folder, or `models:/name[/3]`",
    )
    pretrained: str | None = Field(None, max_length=1000, description="As `POST /finetune`'s")


class DiagnoseRequest(BackboneRequest):
    """``POST /descriptions/{id}/diagnose``: the frozen backbone's concept head (the set's
    descriptions) on a split's images, per class, before any training."""

    split: str = Field("train", min_length=1, max_length=200, description="The images to read")
    compare_to: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Another description set (id or name) diagnosed on the same images beside "
        "this one, with the differences",
    )
    # As a job's: the concept head reads the descriptions only, so templates change nothing
    # measured here; accepted so a job's body can be diagnosed as it is.
    head: StrictHead | None = None  # type: ignore[valid-type]


class EvaluationError(BaseModel):
    code: str
    message: str
    param: str | None = None


class EvaluationProgress(BaseModel):
    splits_done: int
    splits_total: int | None


class EvaluationObject(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    # ``candidates``: scoring candidate descriptions; ``profile``: a version's shift-monitoring
    # reference, from a labelled ID split.
    kind: Literal["model", "descriptions", "candidates", "profile"]
    created_at: int
    finished_at: int | None
    status: EvaluationStatus
    # The version evaluated (``name/3``) and the reference as given (``name@champion``).
    model: str
    model_reference: str
    dataset: str
    splits: list[str]
    served_head: str
    # The description set diagnosed (kind ``descriptions``) or the pool of candidates scored
    # (kind ``candidates``, when stored as a set), else None.
    description_set: str | None
    # Kind ``model``: split -> head (default, concept, dual) -> the card's metrics: n, top1,
    # macro_f1, per_class_acc, worst_group_acc (and group_acc with groups), ece, nll,
    # true_prob (the mean probability of the true class). Kind ``descriptions``:
    # {"diagnostics": models.diagnostics.description_diagnostics's output}.
    # Kind ``candidates``: {"scores": models.description_scoring.score_candidates's output}.
    # None until done.
    results: dict[str, Any] | None
    # split -> the served head's top-1 (a diagnosis: the concept head's), for a glance.
    summary: dict[str, float] | None
    error: EvaluationError | None
    metadata: dict[str, str]
    progress: EvaluationProgress

    @classmethod
    def of(cls, row: Evaluation) -> EvaluationObject:
        # Explicit: the summary is derived, and several columns have other names here.
        results = row.results
        diagnosis = row.kind in ("descriptions", "candidates")
        summary = None
        if results is not None and row.kind == "candidates":
            # The proposed set's concept head on the training images.
            summary = {split: results["scores"]["proposed_concept_top1"] for split in row.splits}
        elif results is not None and diagnosis:
            summary = {split: results["diagnostics"]["concept_top1"] for split in row.splits}
        elif results is not None and row.kind == "profile":
            summary = {split: results["profile"]["accuracy"] for split in row.splits}
        elif results is not None:
            summary = {
                split: heads[SERVED_HEAD]["top1"]
                for split, heads in results.items()
                if isinstance(heads.get(SERVED_HEAD), dict)
            }
        return cls(
            id=row.id,
            kind=row.kind,  # type: ignore[arg-type]
            created_at=row.created_at,
            finished_at=row.finished_at,
            status=EvaluationStatus(row.status),
            model=row.model,
            model_reference=row.model_reference,
            dataset=row.dataset_id,
            splits=list(row.splits),
            served_head=CONCEPT_HEAD if diagnosis else SERVED_HEAD,
            description_set=row.config.get("description_set") if diagnosis else None,
            results=results,
            summary=summary,
            error=EvaluationError(**row.error) if row.error else None,
            metadata=dict(row.metadata_),
            progress=EvaluationProgress(
                splits_done=row.progress_step, splits_total=row.progress_total
            ),
        )


class EvaluationEventObject(TaskEventObject):
    PREFIX = "evalevent-"
    object: Literal["evaluation.event"] = "evaluation.event"
