from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.validation import Name

MAX_NAME = 200  # the column's length


class DatasetFromPath(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Unique among live datasets (case and lookalikes folded: ``service.validation``).
    name: Name = Field(min_length=1, max_length=MAX_NAME)
    path: str = Field(min_length=1, description="A folder or manifest under an allowed root")


class DatasetObject(BaseModel):
    # Read from a Dataset row; its ``counts`` column is the API's ``splits``.
    model_config = ConfigDict(from_attributes=True, validate_by_name=True)

    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    source: str
    classes: list[str]
    # split -> class -> number of images
    splits: dict[str, dict[str, int]] = Field(validation_alias="counts")
    num_images: int
    fingerprint: str
    created_at: int
