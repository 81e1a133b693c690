"""Shapes shared across domains: OpenAI-style lists and errors."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel

from models.config import HeadConfig
from service.validation import strict

T = TypeVar("T")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
# Version numbers and sequence cursors are integer columns; larger numbers name nothing.
MAX_INT = 2**31 - 1
# A head config as a request field (jobs and evaluations both take one): unknown keys refused.
StrictHead = strict(HeadConfig)


class ListResponse(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool = False


class ErrorBody(BaseModel):
    code: str
    message: str
    param: str | None = None
    type: str


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422)
}
