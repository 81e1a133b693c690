"""The event object of a leased task (a job's, an evaluation's): one shape, its own id prefix
and ``object`` name per kind."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from service.db.tables import TaskEvent


class TaskEventObject(BaseModel):
    # The id's prefix; the id is the stream cursor made from ``seq`` (no column holds it).
    PREFIX: ClassVar[str]

    id: str
    object: str
    created_at: int
    level: Literal["info", "warn", "error"]
    type: Literal["message", "metrics"]
    message: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, row: TaskEvent) -> Any:
        # Each kind gives ``object`` its one value as the default.
        return cls(  # type: ignore[call-arg]
            id=f"{cls.PREFIX}{row.seq}",
            created_at=row.created_at,
            level=row.level,  # type: ignore[arg-type]
            type=row.type,  # type: ignore[arg-type]
            message=row.message,
            data=row.data,
        )
