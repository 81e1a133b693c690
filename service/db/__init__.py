"""Metadata storage: SQLAlchemy tables, engines and Alembic migrations."""

from service.db.engine import make_engine, make_sessionmaker, ping
from service.db.tables import (
    ApiKey,
    Base,
    Dataset,
    DescriptionSet,
    Job,
    JobCheckpoint,
    JobEvent,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
)

__all__ = [
    "ApiKey",
    "Base",
    "Dataset",
    "DescriptionSet",
    "Job",
    "JobCheckpoint",
    "JobEvent",
    "ModelAlias",
    "ModelVersion",
    "RegisteredModel",
    "make_engine",
    "make_sessionmaker",
    "ping",
]
