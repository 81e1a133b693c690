from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.config import ObjectiveConfig, WiseConfig
from models.objective_registry import DEFAULT_OBJECTIVE
from service.db.tables import Job, JobCheckpoint
from service.descriptions.schemas import Descriptions, normalise
from service.objectives.schemas import known_objective
from service.schemas import NAME_PATTERN, StrictHead
from service.status import JobStatus
from service.tasks.schemas import TaskEventObject
from service.validation import Name, strict

Auto = Literal["auto"]
StrictObjective = strict(ObjectiveConfig)
StrictWise = strict(WiseConfig)

# Seeds are stored in a 32-bit integer column (PostgreSQL INTEGER); the core hashes any seed
# into torch's range (models.seeding), so this is the only bound.
MAX_SEED = 2**31 - 1
# Steps are stored in 32-bit integer columns (PostgreSQL INTEGER).
MAX_STEPS = 10_000_000


# The job's hyperparameter names (OpenAI's, what users see) and the core TrainConfig field each
# one sets. Model cards store the core's config; the API shows them under the job's names.
TRAIN_KEY_OF = {
    "n_epochs": "epochs",
    "batch_size": "batch_size",
    "learning_rate": "lr",
    "weight_decay": "weight_decay",
    "warmup_steps": "warmup_steps",
    "max_steps": "max_steps",
}
_JOB_NAME_OF = {core: name for name, core in TRAIN_KEY_OF.items()}


def card_hyperparameters(train: dict[str, Any]) -> dict[str, Any]:
    """A card's training config (any card, old or new) in the job's vocabulary: ``n_epochs``
    and ``learning_rate`` instead of ``epochs`` and ``lr``; core-only settings keep their names."""
    return {_JOB_NAME_OF.get(key, key): value for key, value in train.items()}


class Hyperparameters(BaseModel):
    """Each value a number or "auto" (resolved from the dataset size when the job is created)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Annotated[int, Field(ge=1, le=1000)] | Auto = "auto"
    batch_size: Annotated[int, Field(ge=2, le=8192)] | Auto = "auto"
    learning_rate: Annotated[float, Field(gt=0, le=1)] | Auto = "auto"
    weight_decay: Annotated[float, Field(ge=0, le=10)] | Auto = "auto"
    warmup_steps: Annotated[int, Field(ge=0, le=MAX_STEPS)] | Auto = "auto"
    max_steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] | Auto = "auto"


class Method(BaseModel):
    """The objective by name; ``objective`` carries the core's ObjectiveConfig knobs."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        default=DEFAULT_OBJECTIVE, description="A registered objective's name (GET /objectives)"
    )
    objective: StrictObjective | None = None  # type: ignore[valid-type]

    @field_validator("type")
    @classmethod
    def _registered(cls, value: str) -> str:
        return known_objective(value)

    @model_validator(mode="before")
    @classmethod
    def _name_from_type(cls, data: Any) -> Any:
        # The objective's name is the method's type; users give it once.
        if isinstance(data, dict) and isinstance(data.get("objective"), dict):
            objective = data["objective"]
            name = data.get("type", DEFAULT_OBJECTIVE)
            if "name" in objective and objective["name"] != name:
                raise ValueError("method.objective.name, when given, must equal method.type")
            data = {**data, "objective": {**objective, "name": name}}
        return data


class Splits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: str = "train"
    validation: str = "val"
    # None: every split of the dataset whose name starts with "ood".
    ood: list[str] | None = None


class FineTuneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        description="An open_clip architecture (with `pretrained`) or a registry reference "
        "`models:/name`, `models:/name/3`, `models:/name@alias`",
    )
    pretrained: str | None = Field(None, description="open_clip pretrained tag, e.g. 'openai'")
    dataset: str = Field(min_length=1, description="Id of a registered dataset")
    descriptions: str | Descriptions | None = Field(
        None, description="Id or name[/version] of a stored description set, or inline"
    )
    method: Method = Field(default_factory=Method)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    head: StrictHead | None = None  # type: ignore[valid-type]
    wise_ft: StrictWise | None = None  # type: ignore[valid-type]
    splits: Splits = Field(default_factory=Splits)
    registered_model_name: Name = Field(pattern=NAME_PATTERN)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    metadata: dict[str, Annotated[str, Field(max_length=512)]] = Field(default_factory=dict)
    allow_weak_descriptions: bool = Field(
        False,
        description="Train even when the descriptions leave the frozen concept head near chance "
        "(below twice chance, or most classes weak): without it such a job of an objective that "
        "uses the concept head (DRM) fails before training with code `weak_descriptions`",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16:
            raise ValueError("at most 16 metadata pairs")
        if any(not 0 < len(k) <= 64 for k in value):
            raise ValueError("metadata keys must be 1 to 64 characters")
        return value

    @field_validator("descriptions")
    @classmethod
    def _descriptions(cls, value: str | Descriptions | None) -> str | Descriptions | None:
        if isinstance(value, dict):
            return dict(normalise(value))
        return value


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Progress(BaseModel):
    step: int
    total_steps: int | None
    eta_seconds: int | None


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    status: JobStatus
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    seed: int
    error: JobError | None
    fine_tuned_model: str | None
    estimated_finish: int | None
    metadata: dict[str, str]
    dataset: str
    descriptions: str | None
    registered_model_name: str
    wise_ft: dict[str, Any]
    progress: Progress

    @classmethod
    def of(cls, row: Job, now: int) -> JobObject:
        # Explicit, not from_attributes: progress and the ETA are computed from ``now``, and
        # several fields are named differently from their columns (dataset, metadata).
        eta = None
        running = row.status == JobStatus.RUNNING
        if row.estimated_finish is not None and running:
            eta = max(0, row.estimated_finish - now)
        return cls(
            id=row.id,
            created_at=row.created_at,
            finished_at=row.finished_at,
            model=row.model,
            status=JobStatus(row.status),
            hyperparameters=dict(row.hyperparameters),
            method=dict(row.method),
            seed=row.seed,
            error=JobError(**row.error) if row.error else None,
            fine_tuned_model=row.fine_tuned_model,
            estimated_finish=row.estimated_finish if running else None,
            metadata=dict(row.metadata_),
            dataset=row.dataset_id,
            descriptions=row.description_set_id or ("inline" if row.descriptions else None),
            registered_model_name=row.registered_model_name,
            wise_ft=dict(row.wise_ft),
            progress=Progress(
                step=row.progress_step, total_steps=row.progress_total, eta_seconds=eta
            ),
        )


class EventObject(TaskEventObject):
    PREFIX = "ftevent-"
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]
    # The registry reference serving this checkpoint (``/predict``, ``models:/`` as a base).
    fine_tuned_model_checkpoint: str | None = None

    @classmethod
    def of(cls, row: JobCheckpoint) -> CheckpointObject:
        # OpenAI's names for the columns, and an id made from ``seq``.
        return cls(
            id=f"ftckpt-{row.seq}",
            created_at=row.created_at,
            fine_tuning_job_id=row.job_id,
            step_number=row.step_number,
            metrics=dict(row.metrics),
            fine_tuned_model_checkpoint=row.fine_tuned_model,
        )
