"""The tables. Times are unix seconds (the OpenAI objects use them); ids carry a type prefix.

Keep in step with ``service/migrations``: a test compares this metadata with the migrated schema.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id(prefix: str) -> str:
    """Milliseconds then randomness: ids sort by creation time, so they are the list cursor."""
    return f"{prefix}-{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def now() -> int:
    return int(time.time())


# ``service.validation.name_key`` of a name: what uniqueness and lookups compare (case and
# lookalikes folded). Case folding can triple a character ("ΐ"), so it is wider than a name.
NAME_KEY_LENGTH = 600


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # sha256 of the key: keys are 256-bit random tokens, so a fast hash cannot be brute-forced.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    revoked_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Stored from RCS_BOOTSTRAP_API_KEY: a changed setting revokes the previous one at start.
    bootstrap: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        # Two live datasets never share a name; a deleted one's name may be taken again.
        Index(
            "uq_datasets_live_name_key",
            "name_key",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    name_key: Mapped[str] = mapped_column(String(NAME_KEY_LENGTH))
    source: Mapped[str] = mapped_column(String(20))  # "path" | "upload"
    path: Mapped[str] = mapped_column(Text)
    classes: Mapped[list[Any]] = mapped_column(JSON)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    fingerprint: Mapped[str] = mapped_column(String(64))
    num_images: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    # The API key that registered it (the upload quota is per key) and, for uploads, the bytes
    # its unpacked files take on disk.
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Deleted datasets keep their row so finished jobs that used them still read back.
    deleted_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class DescriptionSet(Base):
    __tablename__ = "description_sets"
    __table_args__ = (
        UniqueConstraint("name", "version", name="uq_description_sets_version"),
        # Every version of a name is stored under the spelling its first version had. Unique
        # indexes, not constraints, here and below: SQLite adds an index without copying the table.
        Index("uq_description_sets_name_key_version", "name_key", "version", unique=True),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    name_key: Mapped[str] = mapped_column(String(NAME_KEY_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    descriptions: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    # ``accepted``: jobs may train on it; ``candidates``: a pool to score, never trained on
    # (service.descriptions.service.resolve refuses it).
    status: Mapped[str] = mapped_column(String(20), default="accepted", server_default="accepted")
    # Where the version came from: a draft's model, prompt and time; a proposal's evaluation.
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class LeasedTask:
    """The columns of a leased task (a job, an evaluation): its progress, the idempotency key
    it was created under, and which worker runs it until when (``service.tasks.lease``)."""

    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    idempotency_scope: Mapped[str | None] = mapped_column(String(40), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Which worker runs the task and until when its claim holds (renewed while it runs), and
    # how many claims it has had: the fencing token of ``service.tasks.lease.Attempt``.
    lease_owner: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class TaskEvent:
    """The columns of a leased task's event; each event table adds the column naming its task."""

    # A global sequence: it orders events and is the pagination cursor.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    level: Mapped[str] = mapped_column(String(10))
    type: Mapped[str] = mapped_column(String(10))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Job(LeasedTask, Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_jobs_idempotency"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    model: Mapped[str] = mapped_column(Text)
    method: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    wise_ft: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    estimated_finish: Mapped[int | None] = mapped_column(Integer, nullable=True)
    registered_model_name: Mapped[str] = mapped_column(String(200))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    description_set_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    descriptions: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The models.RunConfig as a dict; the worker fills in the local paths.
    run_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Registry version the job starts from (a registry reference as base model), if any.
    base_version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class JobEvent(TaskEvent, Base):
    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)


class JobCheckpoint(Base):
    __tablename__ = "job_checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number", name="uq_job_checkpoints_step"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The registry version holding this checkpoint's weights (the job's final one), if any.
    fine_tuned_model: Mapped[str | None] = mapped_column(Text, nullable=True)
    # When its files went (the job ended, the version was deleted): no longer listed.
    files_deleted_at: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RegisteredModel(Base):
    __tablename__ = "registered_models"
    __table_args__ = (Index("uq_registered_models_name_key", "name_key", unique=True),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    name_key: Mapped[str] = mapped_column(String(NAME_KEY_LENGTH))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    updated_at: Mapped[int] = mapped_column(Integer, default=now)
    # The highest version number ever given: numbers are never reused after a deletion.
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(ForeignKey("registered_models.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(30))
    status_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(Text)
    # Unique: registering is keyed by the job, so a job delivered twice registers once.
    job_id: Mapped[str | None] = mapped_column(String(40), unique=True, nullable=True)
    tags: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    description: Mapped[str] = mapped_column(Text, default="")
    card: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # sha256 over the artifact's files (set when READY): with ``id``, the model cache's key.
    digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    updated_at: Mapped[int] = mapped_column(Integer, default=now)


class ModelAlias(Base):
    __tablename__ = "model_aliases"
    __table_args__ = (Index("uq_model_aliases_alias_key", "name", "alias_key", unique=True),)

    name: Mapped[str] = mapped_column(
        ForeignKey("registered_models.name", ondelete="CASCADE"), primary_key=True
    )
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    alias_key: Mapped[str] = mapped_column(String(NAME_KEY_LENGTH))
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[int] = mapped_column(Integer, default=now)


class Evaluation(LeasedTask, Base):
    """A registered version (kind ``model``) or a backbone's class descriptions (kind
    ``descriptions``) measured on a dataset's splits by a worker; queued, claimed and finished
    as a job is. It names its version by ``model_name``/``model_version`` and no foreign key:
    an evaluation outlives the version it measured."""

    __tablename__ = "evaluations"
    __table_args__ = (
        UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_evaluations_idempotency"),
        Index("ix_evaluations_model", "model_name", "model_version"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[int] = mapped_column(Integer, default=now, index=True)
    finished_at: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    # ``name/3`` (a version, resolved when the evaluation was created) or a backbone name, and
    # the reference as the client gave it (``name@champion``: an alias moves, the version not).
    model: Mapped[str] = mapped_column(Text)
    model_reference: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The bytes evaluated: a version's row id and card digest, checked again on the worker.
    version_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    splits: Mapped[list[Any]] = mapped_column(JSON)
    # What the worker needs beyond the ids (a diagnosis's backbone and descriptions).
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)


class EvaluationEvent(TaskEvent, Base):
    __tablename__ = "evaluation_events"

    evaluation_id: Mapped[str] = mapped_column(
        ForeignKey("evaluations.id", ondelete="CASCADE"), index=True
    )


class MonitorProfile(Base):
    """A version's reference profile for shift monitoring (``models.monitoring.Profile``),
    computed by a worker from a labelled ID split (an evaluation of kind ``profile``)."""

    __tablename__ = "monitor_profiles"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    evaluation_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    dataset_id: Mapped[str] = mapped_column(String(40))
    split: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[int] = mapped_column(Integer, default=now)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    profile: Mapped[dict[str, Any]] = mapped_column(JSON)


class MonitorImage(Base):
    """One served image's monitoring statistics (``models.monitoring.image_stats``), written by
    the API process that served it; ``window_id`` is set when a window takes it, ``label``
    when feedback names its true class."""

    __tablename__ = "monitor_images"
    __table_args__ = (
        Index("ix_monitor_images_window", "version_id", "window_id"),
        Index("ix_monitor_images_sha256", "version_id", "sha256"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    window_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The served class (also in ``stats``): measured accuracy is counted in SQL.
    pred: Mapped[int] = mapped_column(Integer)
    stats: Mapped[list[Any]] = mapped_column(JSON)
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)


class MonitorWindow(Base):
    """A closed window of a version's traffic and its answers (``monitoring.judge_window``)."""

    __tablename__ = "monitor_windows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    opened_at: Mapped[float] = mapped_column(Float)
    closed_at: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)


class MonitorEvent(TaskEvent, Base):
    """A monitored version's events: drift detected or over, estimated accuracy below its floor."""

    __tablename__ = "monitor_events"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
