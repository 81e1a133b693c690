from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.db.tables import DescriptionSet
from service.schemas import NAME_PATTERN

Descriptions = dict[str, str | list[str]]


def normalise(value: Descriptions) -> dict[str, list[str]]:
    """``{class: text | [texts]}`` -> ``{class: [texts]}``; every class needs a non-empty text."""
    if not value:
        raise ValueError("must name at least one class")
    result: dict[str, list[str]] = {}
    for name, texts in value.items():
        items = [texts] if isinstance(texts, str) else texts
        cleaned = [t.strip() for t in items if t.strip()]
        if not name.strip():
            raise ValueError("class names must be non-empty")
        if not cleaned or len(cleaned) != len(items):
            raise ValueError(f"class {name!r}: every description must be a non-empty text")
        if name.strip() in result:
            # Two keys that differ only in surrounding spaces: one would silently replace the other.
            raise ValueError(f"class {name.strip()!r} is given twice")
        result[name.strip()] = cleaned
    return result


class DescriptionSetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    descriptions: Descriptions

    @field_validator("descriptions")
    @classmethod
    def _normalise(cls, value: Descriptions) -> dict[str, list[str]]:
        return normalise(value)


class DescriptionSetObject(BaseModel):
    id: str
    object: Literal["description_set"] = "description_set"
    name: str
    version: int
    classes: list[str]
    descriptions: dict[str, list[str]]
    created_at: int

    @classmethod
    def of(cls, row: DescriptionSet) -> DescriptionSetObject:
        # ``classes`` is not a column: it is the descriptions' keys, in their stored order.
        return cls(
            id=row.id,
            name=row.name,
            version=row.version,
            classes=list(row.descriptions),
            descriptions=dict(row.descriptions),
            created_at=row.created_at,
        )
