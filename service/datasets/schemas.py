from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.db.tables import Dataset

MAX_NAME = 200  # the column's length


class DatasetFromPath(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME)
    path: str = Field(min_length=1, description="A folder or manifest under an allowed root")


class DatasetObject(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    source: str
    classes: list[str]
    # split -> class -> number of images
    splits: dict[str, dict[str, int]]
    num_images: int
    fingerprint: str
    created_at: int

    @classmethod
    def of(cls, row: Dataset) -> DatasetObject:
        return cls(
            id=row.id,
            name=row.name,
            source=row.source,
            classes=list(row.classes),
            splits=dict(row.counts),
            num_images=row.num_images,
            fingerprint=row.fingerprint,
            created_at=row.created_at,
        )
