from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PredictJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="name (latest READY), name/3 or name@alias")
    images: list[str] = Field(min_length=1, description="base64 images (data: URLs accepted)")
    top_k: int = Field(5, ge=1, le=1000)
    monitor: bool = Field(True, description="false: this traffic is not counted by the monitor")


class Label(BaseModel):
    label: str
    probability: float


class Prediction(BaseModel):
    index: int
    filename: str | None
    sha256: str = Field(description="the image's sha256: what feedback names it by")
    labels: list[Label]


class PredictResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Prediction]
