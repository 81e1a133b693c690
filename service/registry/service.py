"""Registry operations. The worker registers versions; the API reads, aliases and deletes.

A version is created PENDING_REGISTRATION, its artifact copied to storage, and only then marked
READY, so a reader never serves half an artifact. Registration is keyed by the job id, so a job
delivered twice registers once. The API's own registrations (imports, re-merges: transfer.py)
copy first and add the row READY (``reserve_version``, ``insert_ready``), keyed by a
``registration_key`` in the same column.

Version numbers are never reused (as in MLflow): each registered model counts the versions it
has ever had (``last_version``), so deleting ``m/3`` and registering again gives ``m/4``, and a
process that still holds ``m/3`` in memory can never mistake another artifact for it. The API
has no way to delete a whole registered model, so the counter lives as long as the name.

Names and aliases are looked up by their key (``service.validation.name_key``): ``M1`` finds the
model registered as ``m1``, ``m1@CHAMP`` its alias ``champ``, and what is returned (and what
artifacts are stored under) is the spelling first registered.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.queries import insert_with_retry, missing, page, required
from service.db.tables import JobCheckpoint, ModelAlias, ModelVersion, RegisteredModel, now
from service.errors import Conflict, InvalidRequest
from service.schemas import MAX_INT
from service.status import VersionStatus
from service.storage import card_digest
from service.validation import name_key

# Matched with ``fullmatch``: ``$`` alone also matches before a trailing newline.
ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,99}")
# Any case: ``LATEST`` or ``V3`` would read as the reserved reference to a client that folds case.
RESERVED_ALIAS = re.compile(r"latest|v\d+", re.IGNORECASE)
REF_PATTERN = re.compile(
    r"^(?:models:/)?(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))?$"
)  # noqa: E501


@dataclass(frozen=True)
class Ref:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> Ref | None:
    """``name`` (latest READY), ``name/3``, ``name@alias``; ``models:/`` prefix optional."""
    match = REF_PATTERN.match(text.strip())
    if match is None:
        return None
    version = int(match["version"]) if match["version"] else None
    if version is not None and not 1 <= version <= MAX_INT:
        return None
    return Ref(match["name"], version, match["alias"])


def version_key(name: str, version: int) -> str:
    """Where a version's artifact is stored. ``name`` is the model's stored spelling: no two
    models' keys differ only in case (the name key is unique, and registry names are ASCII, so
    NFC changes none), so a case-insensitive store cannot mix two models' folders, and the keys
    of artifacts stored before names were folded are the same."""
    return f"{name}/v{version}"


def resolve(session: Session, text: str, param: str | None = None) -> ModelVersion:
    """The READY version ``text`` names; NotFound (or a 422 on ``param``) otherwise."""
    ref = parse_ref(text)
    if ref is None:
        raise missing(f"{text!r} is not a model reference (name, name/3 or name@alias)", param)
    ref = stored_ref(session, ref, param)
    query = select(ModelVersion).where(ModelVersion.name == ref.name)
    if ref.version is not None:
        row = session.scalar(query.where(ModelVersion.version == ref.version))
    else:
        ready = query.where(ModelVersion.status == VersionStatus.READY)
        row = session.scalar(ready.order_by(ModelVersion.version.desc()).limit(1))
    row = required(row, f"no model {text!r}", param)
    if row.status != VersionStatus.READY:
        raise Conflict(f"model {text!r} is {row.status}, not READY", param)
    return row


def stored_ref(session: Session, ref: Ref, param: str | None = None) -> Ref:
    """``ref`` with the model's stored spelling and an alias replaced by its version; a
    reference to no model stays as it is (it then finds no version)."""
    model = find_model(session, ref.name)
    name = model.name if model is not None else ref.name
    if ref.alias is None or ref.alias.lower() == "latest":
        return Ref(name, ref.version)
    message = f"model {ref.name!r} has no alias {ref.alias!r}"
    return Ref(name, required(find_alias(session, name, ref.alias), message, param).version)


def find_model(session: Session, name: str) -> RegisteredModel | None:
    return session.scalar(select(RegisteredModel).where(RegisteredModel.name_key == name_key(name)))


def find_alias(session: Session, name: str, alias: str) -> ModelAlias | None:
    """The alias of the model stored as ``name`` (its own spelling: see ``stored_name``)."""
    key = name_key(alias)
    return session.scalar(
        select(ModelAlias).where(ModelAlias.name == name, ModelAlias.alias_key == key)
    )


def stored_name(session: Session, name: str) -> str:
    """The stored spelling of the model called ``name`` in any case; ``name`` when none is."""
    model = find_model(session, name)
    return model.name if model is not None else name


def get_model(session: Session, name: str) -> RegisteredModel:
    return required(find_model(session, name), f"no registered model {name!r}")


def list_models(
    session: Session, after: str | None, limit: int
) -> tuple[list[RegisteredModel], bool]:
    query = select(RegisteredModel).order_by(RegisteredModel.name)
    if after is not None:
        query = query.where(RegisteredModel.name > after)
    return page(session, query, limit)


def versions_of(session: Session, name: str) -> list[ModelVersion]:
    query = select(ModelVersion).where(ModelVersion.name == stored_name(session, name))
    return list(session.scalars(query.order_by(ModelVersion.version.desc())))


def aliases_of(session: Session, name: str) -> dict[str, int]:
    rows = session.scalars(select(ModelAlias).where(ModelAlias.name == stored_name(session, name)))
    return {row.alias: row.version for row in rows}


def get_version(session: Session, name: str, version: int) -> ModelVersion:
    stored = get_model(session, name).name
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.name == stored, ModelVersion.version == version)
    )
    return required(row, f"model {name!r} has no version {version}")


def alias_version(session: Session, name: str, alias: str) -> ModelVersion:
    """The version ``alias`` of model ``name`` points at (either in any case)."""
    stored = get_model(session, name).name
    row = required(find_alias(session, stored, alias), f"model {name!r} has no alias {alias!r}")
    return get_version(session, stored, row.version)


def check_alias(alias: str) -> None:
    if RESERVED_ALIAS.fullmatch(alias):
        raise InvalidRequest(f"{alias!r} is reserved ('latest' and 'v<n>', in any case)", "alias")
    if not ALIAS_PATTERN.fullmatch(alias):
        raise InvalidRequest(
            f"{alias!r} is not a usable alias: a letter, then up to 99 letters, digits, '_' or '-'",
            "alias",
        )


def set_alias(session: Session, name: str, alias: str, version: int) -> ModelAlias:
    """Point ``alias`` at ``version``; an alias that differs only in case is the same one, and
    keeps the spelling it was first set with."""
    check_alias(alias)
    target = get_version(session, name, version)
    if target.status != VersionStatus.READY:
        raise Conflict(f"version {version} of {name!r} is {target.status}, not READY", "version")
    for _ in range(2):  # a concurrent first setting of the same alias: update the row it made
        row = find_alias(session, target.name, alias)
        if row is None:
            row = ModelAlias(name=target.name, alias=alias, alias_key=name_key(alias))
            session.add(row)
        row.version, row.updated_at = version, now()
        try:
            session.commit()
            return row
        except IntegrityError:
            session.rollback()
    raise Conflict(f"alias {alias!r} of {name!r} is being set concurrently; retry", "alias")


def delete_alias(session: Session, name: str, alias: str) -> None:
    stored = get_model(session, name).name
    row = required(find_alias(session, stored, alias), f"model {name!r} has no alias {alias!r}")
    session.delete(row)
    session.commit()


def delete_version(session: Session, name: str, version: int) -> ModelVersion:
    """Remove the row and its aliases; the caller deletes the artifact after the commit."""
    row = get_version(session, name, version)
    if row.status == VersionStatus.PENDING:
        # Its worker is copying the artifact now and would mark a deleted row READY.
        raise Conflict(f"version {version} of {name!r} is still being registered", "version")
    session.execute(
        delete(ModelAlias).where(ModelAlias.name == row.name, ModelAlias.version == version)
    )
    # The job's checkpoint that was this version can no longer be used: stop listing it.
    session.execute(
        update(JobCheckpoint)
        .where(JobCheckpoint.fine_tuned_model == f"{row.name}/{version}")
        .values(files_deleted_at=now())
    )
    session.delete(row)
    session.commit()
    return row


def digest_in_use(session: Session, digest: str) -> bool:
    """Whether a version (of any model, in any state) has the artifact bytes ``digest``."""
    return (
        session.scalar(select(ModelVersion.id).where(ModelVersion.digest == digest).limit(1))
        is not None
    )


# --- registration, used by the worker ---


def begin_version(
    session: Session, name: str, job_id: str, card: dict[str, Any], description: str = ""
) -> ModelVersion:
    """The version this job registers, created PENDING on the first call, found on later ones;
    under the model's stored spelling when ``name`` differs from it only in case."""

    def build() -> ModelVersion:
        # Found again when a clash was this job's own row (a second delivery registering).
        existing = session.scalar(select(ModelVersion).where(ModelVersion.job_id == job_id))
        if existing is not None:
            return existing
        stored = _ensure_model(session, name)
        return ModelVersion(
            name=stored,
            version=_next_version(session, stored),
            status=VersionStatus.PENDING,
            source="",
            job_id=job_id,
            card=card,
            description=description,
            tags={},
        )

    row = insert_with_retry(session, build)
    if row is None:
        raise Conflict(f"could not allocate a version of {name!r}")
    return row


def _next_version(session: Session, name: str) -> int:
    """Count one more version of ``name``, in the caller's transaction.

    The UPDATE locks the model's row (PostgreSQL) or the database (SQLite) until the caller
    commits the new version, so concurrent registrations get distinct numbers, and a rollback
    (a clash on the job id) gives the number back.
    """
    bump = (
        update(RegisteredModel)
        .where(RegisteredModel.name == name)
        .values(last_version=RegisteredModel.last_version + 1)
        .returning(RegisteredModel.last_version)
    )
    return int(session.execute(bump).scalar_one())


def _ensure_model(session: Session, name: str) -> str:
    """The stored spelling of model ``name``, registering it as given if there is none."""
    found = find_model(session, name)
    if found is not None:
        return found.name
    session.add(RegisteredModel(name=name, name_key=name_key(name), description="", tags={}))
    try:
        session.commit()
    except IntegrityError:
        # A concurrent first registration, maybe spelled otherwise: its spelling is the name.
        session.rollback()
        return get_model(session, name).name
    return name


def artifact_digest(folder: Path) -> str:
    """What ``mark_ready`` records: the sha256 of the artifact's card (which holds the sha256
    of every other file), so it names all of the artifact's bytes."""
    return card_digest(folder)


def cache_key(row: ModelVersion) -> str:
    """What the model cache keys a version by: its row id and its bytes. On SQLite a deleted
    row's id can be given again, so the digest is what tells two artifacts apart."""
    return f"{row.id}:{row.digest}"


def mark_ready(session: Session, row: ModelVersion, source: str, digest: str) -> None:
    """Flag READY within the caller's transaction (the caller commits with the job's state).

    ``digest`` (``artifact_digest``) names the bytes: the model cache is keyed by it.
    """
    row.status, row.source, row.digest, row.updated_at = VersionStatus.READY, source, digest, now()
    model = session.get(RegisteredModel, row.name)
    if model is not None:
        model.updated_at = now()


def mark_failed(session: Session, row: ModelVersion, message: str) -> None:
    row.status, row.status_message, row.updated_at = VersionStatus.FAILED, message, now()
    session.commit()


# --- registration by the API (imports and re-merges) ---


def registration_key(kind: str, *parts: str) -> str:
    """What keys an API-made version in the ``job_id`` column, as a job keys its own: a retried
    request (same ``Idempotency-Key``) finds the version the first one made. ``kind-`` and 33 hex
    digits of a hash of who asked, for what and with which key: 40 characters, the column's
    width, and never an ``ftjob-`` id."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"{kind}-{digest[: 39 - len(kind)]}"


def find_registered(session: Session, key: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.job_id == key))


def reserve_version(session: Session, name: str) -> tuple[str, int]:
    """Take the next version number of ``name`` now, with no row yet; with the model's stored
    spelling, which the artifact's store key and the row must use.

    The API copies an artifact before its row exists, so a failure at any point leaves no
    PENDING or FAILED row behind: at worst a number never used, and numbers are never reused.
    """
    stored = _ensure_model(session, name)
    version = _next_version(session, stored)
    session.commit()
    return stored, version


def insert_ready(
    session: Session,
    name: str,
    version: int,
    key: str | None,
    card: dict[str, Any],
    stored: tuple[str, str],
    description: str = "",
) -> ModelVersion | None:
    """Add the READY row of an artifact already stored (``stored``: its source and digest);
    None when ``key`` was taken meanwhile (a concurrent retry of the same request won)."""
    source, digest = stored
    row = ModelVersion(
        name=name,
        version=version,
        status=VersionStatus.READY,
        source=source,
        digest=digest,
        job_id=key,
        card=card,
        description=description,
        tags={},
    )
    session.add(row)
    model = session.get(RegisteredModel, name)
    if model is not None:
        model.updated_at = now()
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    return row
