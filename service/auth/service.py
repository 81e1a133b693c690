"""Creating, checking, listing and revoking API keys. Only a key's sha256 is stored; the key
is shown once, when it is created."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.tables import ApiKey, new_id, now
from service.errors import Conflict, NotFound

log = logging.getLogger(__name__)

# admin: list, create and revoke keys; predict: classify and read; train: also change things.
SCOPES = ("admin", "predict", "train")
ADMIN = "admin"
KEY_PREFIX = "rcs_"


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]


class RevokedBootstrapKey(RuntimeError):
    """RCS_BOOTSTRAP_API_KEY names a key that was revoked: presumed leaked, never revived."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_scopes(scopes: Iterable[str]) -> list[str]:
    chosen = sorted(set(scopes))
    unknown = [s for s in chosen if s not in SCOPES]
    if unknown or not chosen:
        raise ValueError(f"scopes must be a non-empty subset of {list(SCOPES)}, got {chosen}")
    return chosen


def create_key(session: Session, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Store a new key's hash; returns the row and the plaintext key (never stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = store_key(session, name, key, scopes)
    return row, key


def store_key(session: Session, name: str, key: str, scopes: Iterable[str]) -> ApiKey:
    existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if existing is not None:
        return existing
    row = ApiKey(
        id=new_id("key"), name=name, key_hash=hash_key(key), scopes=",".join(check_scopes(scopes))
    )
    session.add(row)
    session.commit()
    return row


def authenticate(session: Session, key: str) -> Principal | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return Principal(row.id, frozenset(row.scopes.split(",")))


def list_keys(session: Session, include_revoked: bool = True) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoke a key (again: a no-op). The last active admin key is refused: without one, keys
    could only be managed from the server's command line."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"no API key {key_id!r}", "key_id")
    if row.revoked_at is not None:
        return row
    if ADMIN in row.scopes.split(",") and _active_admins(session) == [row.id]:
        raise Conflict(
            f"{key_id} is the last active admin key: create another admin key first", "key_id"
        )
    row.revoked_at = now()
    session.commit()
    return row


def _active_admins(session: Session) -> list[str]:
    return [k.id for k in _active_admin_rows(session)]


def _active_admin_rows(session: Session) -> list[ApiKey]:
    # Locked (PostgreSQL): two admins revoking each other at once must not both succeed.
    query = select(ApiKey).where(ApiKey.revoked_at.is_(None)).with_for_update()
    return [k for k in session.scalars(query) if ADMIN in k.scopes.split(",")]


def retire_bootstrap_keys(session: Session) -> tuple[list[str], list[str]]:
    """With RCS_BOOTSTRAP_API_KEY unset: revoke the bootstrap keys earlier starts stored, as a
    changed setting revokes the previous key (an operator who removes the key from the server's
    settings means it to stop working); but never the last active admin key, as ``revoke_key``
    refuses it: without one, keys could only be managed from the server's command line.
    The ids revoked, and those kept (at most one) for the caller to warn about."""
    admins = _active_admin_rows(session)
    bootstrap = sorted((k for k in admins if k.bootstrap), key=lambda k: (k.created_at, k.id))
    kept = bootstrap[-1:] if bootstrap and len(bootstrap) == len(admins) else []
    revoked = [k for k in bootstrap if k not in kept]
    for row in revoked:
        row.revoked_at = now()
    session.commit()  # also when nothing changed: it ends the locking read
    return [k.id for k in revoked], [k.id for k in kept]


def apply_bootstrap_setting(session: Session, key: str | None) -> None:
    """RCS_BOOTSTRAP_API_KEY at the API's start: stored when set, retired when unset."""
    if key:
        ensure_bootstrap_key(session, key)
        return
    revoked, kept = retire_bootstrap_keys(session)
    if revoked:
        log.info("RCS_BOOTSTRAP_API_KEY is unset: revoked bootstrap key %s", ", ".join(revoked))
    for key_id in kept:
        log.warning(
            "RCS_BOOTSTRAP_API_KEY is unset, but bootstrap key %s is the only active admin key: "
            "it stays valid. Create another admin key, then revoke it (or restart)",
            key_id,
        )


def ensure_bootstrap_key(session: Session, key: str) -> ApiKey:
    """Store RCS_BOOTSTRAP_API_KEY with every scope; any other bootstrap key is revoked, so
    changing the setting replaces the previous key instead of leaving it valid too."""
    for _ in range(2):  # API processes starting together race to insert the same key
        try:
            return _replace_bootstrap(session, key)
        except IntegrityError:
            session.rollback()
    return _replace_bootstrap(session, key)


def _replace_bootstrap(session: Session, key: str) -> ApiKey:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is not None and row.revoked_at is not None:
        raise RevokedBootstrapKey(f"RCS_BOOTSTRAP_API_KEY is revoked key {row.id}; set a new one")
    if row is None:
        row = ApiKey(id=new_id("key"), name="bootstrap", key_hash=hash_key(key))
        session.add(row)
    row.bootstrap, row.scopes = True, ",".join(SCOPES)
    previous = select(ApiKey).where(
        ApiKey.bootstrap.is_(True), ApiKey.revoked_at.is_(None), ApiKey.id != row.id
    )
    for old in session.scalars(previous):
        old.revoked_at = now()
    session.commit()
    return row
