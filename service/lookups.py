"""Short-lived caches of what every request looks up: its API key and the version it names.

Without them each ``/predict`` made two database round trips (the key's row, then the model
reference's alias and version rows), each on a worker thread of its own: about a third of the
server's CPU per image with a small model (``bench/peer.py --profile``). A hit costs a hash and
a dict lookup on the event loop.

Staleness is bounded two ways:
- this process clears both caches when one of its own transactions commits a change to keys,
  aliases, versions or registered models (SQLAlchemy session events, so no write path can
  forget to), so a revoked key or a moved alias takes effect at once where it was changed;
- another process's change (a second API replica, the CLI revoking a key, a worker registering
  a new version) is seen once an entry is ``ttl_s`` old (``RCS_LOOKUP_CACHE_S``; 0 turns the
  caches off).
Only successes are cached: an unknown key or reference is looked up every time, so a key
created or a version registered elsewhere works on its first request.

A withdrawal (revoking a key, deleting a version, setting or removing an alias) waits out
``ttl_s`` after its commit before it is answered (``settle``): by then no process holds an entry
read before the change, so once the client has its answer no API process accepts the revoked
key or serves the withdrawn version. A new version under a name is seen by other processes'
bare-name references (``name``, ``name@latest``) within ``ttl_s``. An open event stream asks for
its key again after every poll (``service.auth.deps.key_check``), so it ends by the same bound.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker

from service.auth.service import Principal
from service.db.tables import ApiKey, ModelAlias, ModelVersion, RegisteredModel

K = TypeVar("K")
V = TypeVar("V")

WATCHED = (ApiKey, ModelAlias, ModelVersion, RegisteredModel)
WATCHED_TABLES = frozenset(cls.__tablename__ for cls in WATCHED)
_DIRTY = "rcs_lookups_dirty"


class TTLCache(Generic[K, V]):
    """A bounded map whose entries expire ``ttl_s`` after they were stored (thread-safe).

    Refreshed ahead: once an entry is half its ``ttl_s`` old, one caller (the first to ask) is
    told it is absent, and looks it up again while every other caller still gets the entry. So
    under steady traffic an entry is replaced before it expires, and each process reads the
    database about twice per ``ttl_s`` per key, instead of once per request that arrives
    between the expiry and the first lookup's answer (all of them, under load). No entry is
    served past ``ttl_s``; should the refresh fail, the entry expires as it would have.
    """

    def __init__(
        self, ttl_s: float, max_entries: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        # key -> (stored at, value, a refresh was handed out)
        self._entries: OrderedDict[K, tuple[float, V, bool]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        if self.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stored, value, refreshing = entry
            age = self._clock() - stored
            if age >= self.ttl_s:
                del self._entries[key]
                return None
            if age >= self.ttl_s / 2 and not refreshing:
                self._entries[key] = (stored, value, True)
                return None  # this caller refreshes it
            return value

    def put(self, key: K, value: V) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._entries[key] = (self._clock(), value, False)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(frozen=True)
class Resolved:
    """What a model reference named when it was looked up: enough to find the loaded model."""

    name: str
    version: int
    identity: str  # registry.cache_key of the row


class Lookups:
    """The key and reference caches of one API process."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.principals: TTLCache[str, Principal] = TTLCache(ttl_s)
        self.refs: TTLCache[str, Resolved] = TTLCache(ttl_s)
        # Bumped by every clear: a lookup that read the database before a clear must not store
        # what it read after it (it may be the state the clear was for).
        self.generation = 0
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.generation += 1
        self.principals.clear()
        self.refs.clear()

    def settle(self) -> None:
        """Wait until every process's entries read before now have expired (on a worker
        thread: the withdrawing routes are plain functions)."""
        time.sleep(self.ttl_s)

    def principal(self, key: str) -> Principal | None:
        return self.principals.get(_digest(key))

    def remember_principal(self, key: str, principal: Principal, generation: int) -> None:
        if generation == self.generation:
            self.principals.put(_digest(key), principal)

    def remember_ref(self, ref: str, resolved: Resolved, generation: int) -> None:
        if generation == self.generation:
            self.refs.put(ref, resolved)

    def watch(self, sessions: sessionmaker[Session]) -> None:
        """Clear the caches after any commit of these sessions that changed a watched table."""
        event.listen(sessions, "after_flush", _mark_flushed)
        event.listen(sessions, "do_orm_execute", _mark_statement)
        event.listen(sessions, "after_commit", self._after_commit)
        event.listen(sessions, "after_soft_rollback", _forget)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_DIRTY, False):
            self.clear()


def _digest(key: str) -> str:
    # Keys are held by their hash, as the database holds them.
    return hashlib.sha256(key.encode()).hexdigest()


def _mark_flushed(session: Session, _context: Any) -> None:
    changed = (*session.new, *session.dirty, *session.deleted)
    if any(isinstance(obj, WATCHED) for obj in changed):
        session.info[_DIRTY] = True


def _mark_statement(state: ORMExecuteState) -> None:
    if state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in WATCHED_TABLES:
            state.session.info[_DIRTY] = True


def _forget(session: Session, _transaction: Any) -> None:
    session.info.pop(_DIRTY, None)
