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

ACCEPTED = "accepted"
# A pool of candidate sentences per class (user-written, drafted or templates): scored, never
# trained on; a proposal from it becomes an accepted version (POST /descriptions/accept).
CANDIDATES = "candidates"


def create(
    session: Session,
    name: str,
    descriptions: dict[str, list[str]],
    status: str = ACCEPTED,
    provenance: dict[str, Any] | None = None,
) -> DescriptionSet:
    """A new version of ``name``, spelled as its first version was; concurrent creators retry
    on the (name key, version) key."""
    row = insert_with_retry(
        session, lambda: build_version(session, name, descriptions, status, provenance)
    )
    if row is None:
        raise Conflict(f"could not allocate a version of {name!r}; retry")
    return row


def build_version(
    session: Session,
    name: str,
    descriptions: dict[str, list[str]],
    status: str = ACCEPTED,
    provenance: dict[str, Any] | None = None,
) -> DescriptionSet:
    """The next version of ``name``, not yet added: for a caller that commits it with other rows
    in one transaction (a unique-key clash there means a concurrent writer took the number)."""
    latest = session.execute(
        select(DescriptionSet.name, DescriptionSet.version)
        .where(DescriptionSet.name_key == name_key(name))
        .order_by(DescriptionSet.version.desc())
        .limit(1)
    ).first()
    return DescriptionSet(
        id=new_id("desc"),
        name=latest.name if latest else name,
        name_key=name_key(name),
        version=latest.version + 1 if latest else 1,
        descriptions=descriptions,
        status=status,
        provenance=provenance,
    )


def get(session: Session, set_id: str) -> DescriptionSet:
    return required(session.get(DescriptionSet, set_id), f"no description set {set_id!r}")


def resolve(
    session: Session, ref: str, param: str | None, candidates: bool = False
) -> DescriptionSet:
    """``desc-...`` (an id), ``name`` (its latest accepted version) or ``name/3``; unknown: a
    422 on ``param``, or a 404 without one (the URL names it). A pool of candidates is
    refused (422) unless ``candidates``: nothing trains on one; ``name`` then means the
    latest version of either status."""
    if ref.startswith("desc-"):
        row = session.get(DescriptionSet, ref)
    else:
        name, _, version = ref.partition("/")
        query = select(DescriptionSet).where(DescriptionSet.name_key == name_key(name))
        if version:
            if not version.isdecimal() or not 1 <= int(version) <= MAX_INT:
                raise InvalidRequest(f"bad description set reference {ref!r}", param)
            query = query.where(DescriptionSet.version == int(version))
        query = query.order_by(DescriptionSet.version.desc()).limit(1)
        row = None
        if not version and not candidates:
            row = session.scalar(query.where(DescriptionSet.status == ACCEPTED))
        # None yet: the latest version of either status (a pool is refused below by name).
        row = row or session.scalar(query)
    found = required(row, f"no description set {ref!r}", param)
    if found.status != ACCEPTED and not candidates:
        raise InvalidRequest(
            f"description set {ref!r} ({found.name}/{found.version}) is a pool of candidates, "
            "not accepted descriptions: score it (POST /descriptions/score) and accept a "
            "proposal (POST /descriptions/accept) to train on it",
            param or "descriptions",
        )
    return found


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
