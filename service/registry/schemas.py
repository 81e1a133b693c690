from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.db.tables import ModelVersion, RegisteredModel
from service.jobs.schemas import card_hyperparameters
from service.schemas import MAX_INT
from service.status import VersionStatus

JOB_PREFIX = "ftjob-"
MAX_DESCRIPTION = 5000


class VersionSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    status: VersionStatus


class RegisteredModelObject(BaseModel):
    object: Literal["registered_model"] = "registered_model"
    name: str
    description: str
    tags: dict[str, str]
    created_at: int
    updated_at: int
    aliases: dict[str, int]
    latest_versions: list[VersionSummary]

    @classmethod
    def of(
        cls, row: RegisteredModel, versions: list[ModelVersion], aliases: dict[str, int]
    ) -> RegisteredModelObject:
        # Versions and aliases come from their own tables, so this is not one row's attributes.
        return cls(
            name=row.name,
            description=row.description,
            tags=dict(row.tags),
            created_at=row.created_at,
            updated_at=row.updated_at,
            aliases=aliases,
            latest_versions=[VersionSummary.model_validate(v) for v in versions],
        )


class ModelVersionObject(BaseModel):
    """A version and its model card: metrics, the WiSE-FT curve, provenance."""

    object: Literal["model_version"] = "model_version"
    name: str
    version: int
    status: VersionStatus
    status_message: str | None
    source: str
    # sha256 of the artifact's card (which lists every file's sha256): what is served.
    digest: str | None = None
    # The job that trained it; None for an imported or re-merged version (see ``origin``).
    job_id: str | None
    tags: dict[str, str]
    description: str
    aliases: list[str]
    created_at: int
    updated_at: int
    objective: str | None = None
    beta: float | None = None
    classes: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] = Field(default_factory=dict)
    wise_ft: dict[str, Any] = Field(default_factory=dict)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    dataset: dict[str, Any] = Field(default_factory=dict)
    descriptions: dict[str, list[str]] = Field(default_factory=dict)
    backbone: dict[str, Any] = Field(default_factory=dict)
    # The card's ``source``: imported from an archive (its sha256) or merged from ``name/v`` at
    # an alpha; None for a version a job trained.
    origin: dict[str, Any] | None = None
    # Where to read it further: its robustness report and its evaluations on other datasets.
    report: str = ""
    evaluations: str = ""

    @classmethod
    def of(cls, row: ModelVersion, aliases: dict[str, int]) -> ModelVersionObject:
        # Most fields are read out of the stored model card, not columns.
        card: dict[str, Any] = row.card or {}
        config = card.get("config") or {}
        return cls(
            name=row.name,
            version=row.version,
            status=VersionStatus(row.status),
            status_message=row.status_message,
            source=row.source,
            digest=row.digest,
            # Imports and merges keep a registration key in the column, never a job's id.
            job_id=row.job_id if (row.job_id or "").startswith(JOB_PREFIX) else None,
            tags=dict(row.tags),
            description=row.description,
            aliases=sorted(a for a, v in aliases.items() if v == row.version),
            created_at=row.created_at,
            updated_at=row.updated_at,
            objective=card.get("objective"),
            beta=card.get("beta"),
            classes=list(card.get("classnames", [])),
            metrics=card.get("metrics") or {},
            wise_ft=card.get("wise") or {},
            hyperparameters=card_hyperparameters(config.get("train") or {}),
            dataset=card.get("dataset") or {},
            descriptions=card.get("descriptions") or {},
            backbone=card.get("backbone") or {},
            origin=card.get("source"),
            report=f"/models/{row.name}/versions/{row.version}/report",
            evaluations=f"/evaluations?model={row.name}/{row.version}",
        )


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    description: str = Field(default="", max_length=MAX_DESCRIPTION)


class AliasUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, le=MAX_INT)


class AliasObject(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    object: Literal["model_alias"] = "model_alias"
    name: str
    alias: str
    version: int
