"""Server-sent events of a task's events (a job's, an evaluation's), within limits that keep
streams from starving the API.

A stream holds no database connection while it waits: each poll borrows one in a short session
and gives it back before the stream sleeps, and at most ``POLL_CONCURRENCY`` polls run at once,
fewer than the pool's steady connections, so however many streams are open, plain requests
still find a connection. Open streams are counted per API key and in all; past either cap a new
stream is refused with 429 and ``Retry-After``.

Authentication stays with the route: a browser's ``EventSource`` cannot send an
``Authorization`` header, so a dashboard will need another credential there (a short-lived
token in the query, say), and only the route's dependency changes (``service.tasks.routes``).
The route also hands over a check of the key the stream was opened with, asked after every
poll: a stream outlives its request, and a revoked key must not keep one open (it ends with an
``error`` event).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.errors import InvalidRequest, TooManyRequests
from service.schemas import MAX_INT

log = logging.getLogger(__name__)

# The default pool keeps 5 connections (plus 10 overflow); 4 leaves plain requests at least one
# steady connection and all the overflow even when every stream polls at once.
POLL_CONCURRENCY = 4
# An idle stream polls less often (doubling up to this), so 100 quiet streams cost little.
MAX_POLL_S = 2.0
HEARTBEAT_S = 15.0
# A refused stream may retry when another ends; nothing tells when that is, so a few seconds.
RETRY_AFTER_S = 5
DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeout)


class TooManyStreams(TooManyRequests):
    code = "too_many_streams"


class Event(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def type(self) -> str: ...

    def model_dump_json(self) -> str: ...


class Batch(NamedTuple):
    """One poll's answer: the events after a cursor (at most ``STREAM_BATCH``), the task's
    status, and whether more events were already there to read after these."""

    events: Sequence[Event]
    status: str
    more: bool


# One poll: the events after a cursor and the task's status, read in a short session.
Poll = Callable[[int], Batch]
# Whether the key a stream was opened with is still accepted (``service.auth.deps.key_check``).
KeyCheck = Callable[[], Awaitable[bool]]


@dataclass
class StreamSlots:
    """Open event streams, per API key and in all.

    The route admits a stream on a worker thread and the event loop releases it, hence the lock.
    """

    open: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    polls: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(POLL_CONCURRENCY))

    @property
    def total(self) -> int:
        with self.lock:
            return self.open.total()

    def acquire(self, key: str, per_key: int, total: int) -> None:
        with self.lock:
            if self.open.total() >= total:
                raise TooManyStreams(
                    f"{total} event streams are open on this server, its limit; retry later",
                    "stream",
                    RETRY_AFTER_S,
                )
            if self.open[key] >= per_key:
                raise TooManyStreams(
                    f"this API key has {per_key} event streams open, its limit; close one "
                    "or retry later",
                    "stream",
                    RETRY_AFTER_S,
                )
            self.open[key] += 1

    def release(self, key: str) -> None:
        with self.lock:
            self.open[key] -= 1
            if self.open[key] <= 0:
                del self.open[key]


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that runs ``on_close`` however it ends: the task
    finished, the client went away, or the connection broke before the first byte."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def frame(event: Event) -> str:
    # The id line lets a browser's EventSource resume with Last-Event-ID after a reconnect.
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.model_dump_json()}\n\n"


def cursor_of(event: Event) -> int:
    # The sequence number after the id's prefix: ``ftevent-12`` (a job), ``evalevent-12``.
    return int(event.id.rpartition("-")[2])


def parse_event_cursor(after: str | None, prefix: str, param: str = "after") -> int:
    """An event id (``<prefix>12``, or its number) as the sequence number to read after; 0 for
    none. Job and evaluation events share this rule, each with its own id prefix."""
    if after is None:
        return 0
    digits = after.strip().removeprefix(prefix)
    if not digits.isdecimal() or int(digits) > MAX_INT:
        raise InvalidRequest(f"bad event cursor {after!r}: expected an event id", param)
    return int(digits)


# How often an open stream reads new events while it has caught up.
STREAM_POLL_S = 0.5
# Events one poll reads at most. A full batch is followed by the next poll at once, so a long
# history is replayed as fast as it is read; the pause is only for waiting on new events.
STREAM_BATCH = 500


async def _always_valid() -> bool:
    return True


async def event_stream(
    poll: Poll,
    cursor: int,
    terminal: Sequence[str],
    slots: StreamSlots,
    poll_s: float,
    key_valid: KeyCheck = _always_valid,
) -> AsyncIterator[str]:
    """Events after ``cursor`` as they come, then an ``end`` event once the task is terminal;
    an ``error`` event instead, and the end, once the key is revoked or the database fails."""
    delay, idle = poll_s, 0.0
    while True:
        try:
            async with slots.polls:
                events, status, more = await run_in_threadpool(poll, cursor)
                # After the read, before anything is sent: once a revoke is answered, nothing
                # read after it reaches the client (the check sees it within the cache time).
                valid = await key_valid()
        except DATABASE_ERRORS as exc:
            # The client reconnects (an EventSource does by itself) and resumes where it was.
            log.warning("event stream stopped, database unavailable: %s", type(exc).__name__)
            yield _error_frame("database_unavailable", DATABASE_GONE, "server_error")
            return
        if not valid:
            # A reconnect would be refused with 401, which ends an EventSource for good.
            yield _error_frame("invalid_api_key", KEY_REVOKED, "invalid_request_error")
            return
        if events:
            # One chunk per batch: one write to the connection, not one per event.
            cursor = cursor_of(events[-1])
            yield "".join(frame(event) for event in events)
        elif status in terminal:
            yield f"event: end\ndata: {json.dumps({'status': status})}\n\n"
            return
        if events:
            delay, idle = poll_s, 0.0
            if more:
                continue  # more are waiting: no pause before reading them
        else:
            idle += delay
        if idle >= HEARTBEAT_S:  # a comment line keeps proxies from closing the stream
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(delay)
        if not events:
            delay = min(delay * 2, max(poll_s, MAX_POLL_S))


DATABASE_GONE = "the database is unavailable or busy; reconnect shortly"
KEY_REVOKED = "the API key this stream was opened with was revoked; the stream is closed"


def _error_frame(code: str, message: str, kind: str) -> str:
    # The shape of an error response's body, so a client parses both alike.
    error = {"code": code, "message": message, "param": None, "type": kind}
    return f"event: error\ndata: {json.dumps({'error': error})}\n\n"
