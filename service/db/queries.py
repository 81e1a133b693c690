"""Query helpers every domain uses: a row that must exist, a page of a list, an insert that
retries a unique clash."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.errors import InvalidRequest, NotFound, ServiceError

T = TypeVar("T")


def missing(message: str, param: str | None = None) -> ServiceError:
    """What to raise for an absent row: 404 when the path names it, 422 when a request field
    (``param``) does, since then the request, not the URL, is what is wrong."""
    return InvalidRequest(message, param) if param is not None else NotFound(message)


def required(row: T | None, message: str, param: str | None = None) -> T:
    """``row``, or the ``missing`` error when it is None."""
    if row is None:
        raise missing(message, param)
    return row


def page(session: Session, query: Select[Any], limit: int) -> tuple[list[Any], bool]:
    """At most ``limit`` rows of the ordered ``query`` and whether more follow (``has_more``)."""
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def insert_with_retry(session: Session, build: Callable[[], T], retries: int = 5) -> T | None:
    """Commit the row ``build()`` makes; on a unique-key clash (a concurrent writer took the same
    version number) roll back and build it again. None when every try clashed."""
    for _ in range(retries):
        row = build()
        session.add(row)
        try:
            session.commit()
            return row
        except IntegrityError:
            session.rollback()
    return None
