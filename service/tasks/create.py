"""Creating a leased task once per idempotency key, then queueing it after the commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.json_values import stable_hash
from service.datasets import service as datasets
from service.errors import Conflict, Unavailable
from service.tasks.lease import Tasks

# Queues a task by id once it is committed.
Sender = Callable[[str], None]


def request_hash(body: BaseModel) -> str:
    """What an idempotency key's later requests must repeat: the body, as JSON."""
    return stable_hash(body.model_dump(mode="json"))


def _same_request(row: Any, digest: str) -> Any:
    if row.request_hash != digest:
        raise Conflict("Idempotency-Key was used with a different request", "Idempotency-Key")
    return row


def create_once(
    tasks: Tasks,
    session: Session,
    make: Callable[[], Any],
    digest: str,
    send: Sender,
    scope: str,
    idempotency_key: str | None,
    validated: Callable[[Any], str],
) -> tuple[Any, bool]:
    """The task ``make`` builds, stored with ``validated(row)`` and a queued event and sent, and
    True; or the task an earlier request with the same key made (its body's ``digest`` must be
    the same, else 409), and False."""
    if idempotency_key is not None:
        existing = tasks.find_idempotent(session, scope, idempotency_key)
        if existing is not None:
            return _same_request(existing, digest), False
    row = make()
    # Locked for this transaction before anything is written: a concurrent DELETE of the
    # dataset then either sees this task (409) or has committed first (422 here).
    datasets.hold_live(session, row.dataset_id, "dataset")
    row.idempotency_scope, row.idempotency_key, row.request_hash = scope, idempotency_key, digest
    session.add(row)
    tasks.add_event(session, row.id, validated(row))
    tasks.add_event(session, row.id, f"{tasks.noun} queued")
    try:
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its task.
        session.rollback()
        winner = tasks.find_idempotent(session, scope, idempotency_key) if idempotency_key else None
        if winner is None:
            raise
        return _same_request(winner, digest), False
    try:
        send(row.id)
    except Exception as exc:  # any broker failure: the task must not stay queued forever
        noun = tasks.noun.lower()
        tasks.fail(session, row.id, "queue_unavailable", f"could not queue the {noun}: {exc}")
        raise Unavailable(f"the task queue is unavailable; the {noun} was not queued") from exc
    return row, True
