"""FastAPI dependencies shared by the routers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from service.context import AppContext, get_ctx, session_scope


def get_session(ctx: Annotated[AppContext, Depends(get_ctx)]) -> Iterator[Session]:
    yield from session_scope(ctx)


@dataclass(frozen=True)
class PageParams:
    """A list request's cursor (the last id seen) and page size, as every list route takes them."""

    after: str | None
    limit: int


def page_params(
    after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20
) -> PageParams:
    return PageParams(after, limit)


Ctx = Annotated[AppContext, Depends(get_ctx)]
Db = Annotated[Session, Depends(get_session)]
Page = Annotated[PageParams, Depends(page_params)]
