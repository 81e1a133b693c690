"""The events route of a leased task (a job's, an evaluation's): one page of events, or
server-sent events until the task ends (``service.tasks.streams``), the same for both kinds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated, Any, Protocol

from fastapi import Depends, Header, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from service.context import AppContext
from service.db.tables import TaskEvent
from service.schemas import ListResponse
from service.status import TERMINAL
from service.tasks import streams
from service.tasks.create import Sender
from service.tasks.schemas import TaskEventObject


def sender(ctx: AppContext, task: str, payload: Callable[[str], BaseModel]) -> Sender:
    """Sends ``task`` by name with ``payload(task_id)``, after the task's row is committed;
    a broker that does not answer fails the request (``service.tasks.create``)."""

    def send(task_id: str) -> None:
        ctx.broker.send_task(
            task,
            kwargs={"payload": payload(task_id).model_dump()},
            queue=ctx.settings.training_queue,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    return send


class TaskReads(Protocol):
    """What the route reads of one kind of task: its domain's service module (looked up per
    request, so a test can replace a function there)."""

    def get(self, session: Session, task_id: str, /) -> Any: ...

    def events(
        self, session: Session, task_id: str, after_seq: int, limit: int, /
    ) -> tuple[Sequence[TaskEvent], bool]: ...


def events_route(shape: type[TaskEventObject]) -> dict[str, Any]:
    """The events route's declaration: a page of ``shape`` (JSON), or server-sent events."""
    return {
        "response_model": ListResponse[shape],  # type: ignore[valid-type]
        "responses": {200: {"content": {"text/event-stream": {}}}},
    }


class EventsQuery:
    """The events route's query: a page after a cursor, or a stream resuming after the
    ``Last-Event-ID`` a browser's EventSource sends when it reconnects."""

    def __init__(
        self,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        stream: bool = False,
        last_event_id: Annotated[str | None, Header(max_length=255)] = None,
    ) -> None:
        self.after, self.limit, self.stream = after, limit, stream
        self.last_event_id = last_event_id


Events = Annotated[EventsQuery, Depends()]


def events_response(
    ctx: AppContext,
    reads: TaskReads,
    shape: type[TaskEventObject],
    task_id: str,
    key: str,
    key_valid: streams.KeyCheck,
    query: EventsQuery,
) -> ListResponse[Any] | StreamingResponse:
    """Events oldest first (as ``shape``); ``query.stream``: server-sent events until the task
    ends, holding one of ``key``'s stream slots."""
    # Sessions of their own rather than the request's: no connection outlives the read.
    with ctx.sessions() as db:
        reads.get(db, task_id)
        if not query.stream:
            cursor = streams.parse_event_cursor(query.after, shape.PREFIX)
            rows, more = reads.events(db, task_id, cursor, query.limit)
            return ListResponse(data=[shape.of(r) for r in rows], has_more=more)
    if query.last_event_id is not None:
        cursor = streams.parse_event_cursor(query.last_event_id, shape.PREFIX, "Last-Event-ID")
    else:
        cursor = streams.parse_event_cursor(query.after, shape.PREFIX)
    task_poll = partial(poll, ctx, reads, shape, task_id)
    return open_stream(ctx, key, task_poll, cursor, key_valid)


def poll(
    ctx: AppContext, reads: TaskReads, shape: type[TaskEventObject], task_id: str, cursor: int
) -> streams.Batch:
    """One poll of a task's stream: its events after ``cursor`` and its status."""
    with ctx.sessions() as session:
        # Status first: the worker commits its last events with the terminal status, so events
        # read afterwards include them. Read the other way round, a task finishing between the
        # two reads would end the stream without its final events.
        status = reads.get(session, task_id).status
        rows, more = reads.events(session, task_id, cursor, streams.STREAM_BATCH)
        return streams.Batch([shape.of(r) for r in rows], status, more)


def open_stream(
    ctx: AppContext, key: str, poll: streams.Poll, cursor: int, key_valid: streams.KeyCheck
) -> streams.EventStreamResponse:
    """A task's events as server-sent events, holding one of ``key``'s stream slots (429 past
    the per-key or total cap) for as long as the response lives, and ending it once
    ``key_valid`` says the key it was opened with is revoked."""
    slots, settings = ctx.streams, ctx.settings
    slots.acquire(key, settings.stream_max_per_key, settings.stream_max_total)
    ctx.metrics.event_streams.set(slots.total)

    def close() -> None:
        slots.release(key)
        ctx.metrics.event_streams.set(slots.total)

    # Read at each call, not bound at import: a test shortens the pace on ``streams``.
    events = streams.event_stream(poll, cursor, TERMINAL, slots, streams.STREAM_POLL_S, key_valid)
    return streams.EventStreamResponse(events, on_close=close)
