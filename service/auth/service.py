"""Creating and checking API keys. Only a key's sha256 is stored; the key is shown once."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.tables import ApiKey, new_id

SCOPES = ("predict", "train")
KEY_PREFIX = "rcs_"


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]


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
