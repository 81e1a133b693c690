"""Store description sets as versions of a name, and resolve references to them.

Names are compared by key (``service.validation.name_key``): ``Shapes`` adds a version to the
set first stored as ``shapes``, keeps that spelling, and ``SHAPES/2`` finds it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.queries import insert_with_retry, page, required
from service.db.tables import DescriptionSet, new_id
from service.errors import Conflict, InvalidRequest
from service.schemas import MAX_INT
from service.validation import name_key


def create(session: Session, name: str, descriptions: dict[str, list[str]]) -> DescriptionSet:
    """A new version of ``name``, spelled as its first version was; concurrent creators retry
    on the (name key, version) key."""
    key = name_key(name)

    def build() -> DescriptionSet:
        latest = session.execute(
            select(DescriptionSet.name, DescriptionSet.version)
            .where(DescriptionSet.name_key == key)
            .order_by(DescriptionSet.version.desc())
            .limit(1)
        ).first()
        return DescriptionSet(
            id=new_id("desc"),
            name=latest.name if latest else name,
            name_key=key,
            version=latest.version + 1 if latest else 1,
            descriptions=descriptions,
        )

    row = insert_with_retry(session, build)
    if row is None:
        raise Conflict(f"could not allocate a version of {name!r}; retry")
    return row


def get(session: Session, set_id: str) -> DescriptionSet:
    return required(session.get(DescriptionSet, set_id), f"no description set {set_id!r}")


def resolve(session: Session, ref: str, param: str | None) -> DescriptionSet:
    """``desc-...`` (an id), ``name`` (its latest version) or ``name/3``; unknown: a 422 on
    ``param``, or a 404 without one (the URL names it)."""
    if ref.startswith("desc-"):
        row = session.get(DescriptionSet, ref)
    else:
        name, _, version = ref.partition("/")
        query = select(DescriptionSet).where(DescriptionSet.name_key == name_key(name))
        if version:
            if not version.isdecimal() or not 1 <= int(version) <= MAX_INT:
                raise InvalidRequest(f"bad description set reference {ref!r}", param)
            query = query.where(DescriptionSet.version == int(version))
        row = session.scalar(query.order_by(DescriptionSet.version.desc()).limit(1))
    return required(row, f"no description set {ref!r}", param)


def list_all(
    session: Session, name: str | None, after: str | None, limit: int
) -> tuple[list[DescriptionSet], bool]:
    query: Any = select(DescriptionSet)
    if name is not None:
        query = query.where(DescriptionSet.name_key == name_key(name))
    query = query.order_by(DescriptionSet.id.desc())
    if after is not None:
        query = query.where(DescriptionSet.id < after)
    return page(session, query, limit)
