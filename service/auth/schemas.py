"""API key objects: what a key may do and when it was made or revoked, never its secret."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.auth.service import check_scopes
from service.db.tables import ApiKey


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    scopes: Annotated[list[str], Field(min_length=1, max_length=10)] = ["predict"]

    @field_validator("scopes")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return check_scopes(value)


class KeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    scopes: list[str]
    created_at: int
    revoked_at: int | None
    # Stored from RCS_BOOTSTRAP_API_KEY (replaced when the setting changes).
    bootstrap: bool

    @classmethod
    def of(cls, row: ApiKey) -> KeyObject:
        return cls(
            id=row.id,
            name=row.name,
            scopes=row.scopes.split(","),
            created_at=row.created_at,
            revoked_at=row.revoked_at,
            bootstrap=bool(row.bootstrap),
        )


class CreatedKey(KeyObject):
    """Returned once, by the request that created the key: ``key`` is never shown again."""

    key: str
