from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.db.tables import DescriptionSet
from service.schemas import NAME_PATTERN
from service.validation import Name, clean_name, clean_text, distinct, spelled

Descriptions = dict[str, str | list[str]]


def normalise(value: Descriptions) -> dict[str, list[str]]:
    """``{class: text | [texts]}`` -> ``{class: [texts]}``; every class needs a non-empty text.

    Class names and texts follow the name policy (``service.validation``): NFC, no control or
    invisible characters; two classes that are one name (``Cat`` and ``cat``) are refused.
    """
    if not value:
        raise ValueError("must name at least one class")
    result: dict[str, list[str]] = {}
    for raw, texts in value.items():
        name = _clean(clean_name, raw, f"class {spelled(raw.strip())}")
        if not name:
            raise ValueError("class names must be non-empty")
        items = [texts] if isinstance(texts, str) else texts
        cleaned = [_clean(clean_text, t, f"class {name!r}: a description").strip() for t in items]
        if not cleaned or not all(cleaned):
            raise ValueError(f"class {name!r}: every description must be a non-empty text")
        result[name] = cleaned
    # Two keys that differ only in spaces, case or normalisation: one would replace the other.
    distinct(value, "classes")
    return result


def _clean(clean: Callable[[str], str], value: str, what: str) -> str:
    # The error's param is the whole field: the message says which class and text it is about.
    try:
        return clean(value)
    except ValueError as exc:
        raise ValueError(f"{what} {exc}") from exc


class DescriptionSetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(pattern=NAME_PATTERN)
    descriptions: Descriptions
    status: Literal["accepted", "candidates"] = Field(
        "accepted",
        description="`candidates`: a pool of candidate sentences per class, to score "
        "(POST /descriptions/score); no job trains on it",
    )

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
    status: Literal["accepted", "candidates"] = "accepted"
    provenance: dict[str, Any] | None = None

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
            status=row.status,  # type: ignore[arg-type]
            provenance=row.provenance,
        )
