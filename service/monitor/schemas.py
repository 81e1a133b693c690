from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.db.tables import MonitorEvent, MonitorWindow
from service.monitor.store import MAX_FEEDBACK


class ProfileRequest(BaseModel):
    """``POST /models/{name}/versions/{v}/monitor/profile``: compute (or recompute) the
    version's reference profile on a worker, from a labelled in-distribution split."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(
        None,
        min_length=1,
        max_length=40,
        description="A registered dataset with the model's classes; default: the dataset the "
        "version was trained on",
    )
    split: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Its labelled ID split; default: the version's validation split (`val`)",
    )


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(description="The image's sha256, as /predict answered it")
    label: str = Field(min_length=1, max_length=1000, description="The image's true class")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[FeedbackItem], Field(min_length=1, max_length=MAX_FEEDBACK)]


class WindowObject(BaseModel):
    id: int
    object: Literal["monitor.window"] = "monitor.window"
    opened_at: float
    closed_at: float
    n: int
    # models.monitoring.judge_window's answer: drift, accuracy (ATC-NE), disagreement, ...
    result: dict[str, Any]
    # Top-1 on the images feedback labelled, when any were.
    measured: dict[str, Any] | None

    @classmethod
    def of(cls, row: MonitorWindow, measured: dict[str, Any] | None) -> WindowObject:
        return cls(
            id=row.id,
            opened_at=row.opened_at,
            closed_at=row.closed_at,
            n=row.n,
            result=dict(row.result),
            measured=measured,
        )


class MonitorEventObject(BaseModel):
    id: str
    object: Literal["monitor.event"] = "monitor.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, row: MonitorEvent) -> MonitorEventObject:
        return cls(
            id=f"monevent-{row.seq}",
            created_at=row.created_at,
            level=row.level,
            message=row.message,
            data=row.data,
        )


class MonitorObject(BaseModel):
    object: Literal["monitor"] = "monitor"
    model: str
    enabled: bool
    # The reference: its split, size, accuracy, disagreement and confidence quantiles.
    profile: dict[str, Any]
    settings: dict[str, Any]
    # The open window so far (status ``not_enough_traffic`` below the minimum window).
    current: dict[str, Any]
    # Closed windows, oldest first (the newest ``limit``).
    windows: list[WindowObject]
    events: list[MonitorEventObject]


class FeedbackResponse(BaseModel):
    object: Literal["monitor.feedback"] = "monitor.feedback"
    model: str
    labelled: int
    # The windows the labelled images are in (and the open one), with their measured top-1.
    windows: list[WindowObject]
    current: dict[str, Any] | None
