"""Serving the API: ``serve()`` runs uvicorn with ``ServiceHttpProtocol``, the one way every
deployment, test and benchmark starts the server.

``ServiceHttpProtocol`` is uvicorn's httptools protocol (the fast one) with the limits a server
reachable by anyone needs before any key is checked:

- a request's head (request line and headers) over ``RCS_MAX_HEADER_BYTES``, or with more than
  ``RCS_MAX_HEADERS`` fields, is answered 431 and the connection closed: at most about that many
  bytes (plus one socket read) are ever held for it, however much the client sends;
- a head that has not arrived ``RCS_HEADER_TIMEOUT_S`` after it began (or after the connection
  opened), and a body that stalls for ``RCS_BODY_TIMEOUT_S`` or arrives slower than
  ``RCS_BODY_MIN_BYTES_PER_S`` (Apache's mod_reqtimeout rule: ``RCS_BODY_TIMEOUT_S`` plus one
  second per that many bytes received), are answered 408 and the connection closed;
- one client address may hold ``RCS_MAX_CONNECTIONS_PER_CLIENT`` connections to a process; one
  more is answered 429 and closed at once;
- a malformed request is answered 400 in the error shape, not uvicorn's plain text.

Every refusal is our JSON error body (``service.http_errors.error_body``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections import Counter
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service import listen
from service.http_errors import error_body
from service.settings import Settings, settings_from_env

# After a refusal the connection is half-closed and what the client still sends is read and
# dropped for at most this long, so the answer reaches it instead of being lost to the reset a
# close with unread data causes (nginx's lingering close).
LINGER_S = 2.0
# While the server, not the client, holds a body up (the app has not read what came, or has
# not yet asked for a 100-continue body), the body clock is looked at this often; it restarts
# when the server lets go.
SERVER_WAIT_POLL_S = 1.0


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost the server before the app sees its request."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    body_min_bytes_per_s: float
    max_connections_per_client: int  # 0: no cap

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        # Each field is the setting of the same name.
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})


@cache
def limits_from_env() -> HttpLimits:
    """Once per process: each uvicorn worker reads the RCS_* settings as the app does."""
    return HttpLimits.from_settings(settings_from_env())


class _Refused(Exception):
    """Stops the parser in a callback once the request has been refused (and answered)."""


class ServiceHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of the module docstring."""

    # None: ``limits_from_env()``; a subclass may set its own (tests).
    limits: ClassVar[HttpLimits | None] = None
    # Open connections per client address, in this process.
    _per_client: ClassVar[Counter[str]] = Counter()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.limits or limits_from_env()
        self._max_headers = self._limits.max_headers
        self._max_head_bytes = self._limits.max_header_bytes
        self._slot: str | None = None  # the address this connection counts against
        self._refused = False
        # The head being read: begun, the size of the socket read it began in, the reads since
        # that fell wholly inside it, and its fields. httptools holds a header until it is
        # complete, so the reads are what bound a head still coming.
        self._in_head = False
        self._read = 0  # the size of the read being parsed
        self._head_first = 0
        self._head_reads = 0
        self._header_count = 0
        # The clocks: when the awaited head began, when the awaited body began, its bytes since
        # and when the last came. None: not waiting for one.
        self._head_started: float | None = None
        self._body_started: float | None = None
        self._body_bytes = 0
        self._body_last = 0.0
        self._body_held = False  # the server held the body up at the last look
        self._timer: asyncio.TimerHandle | None = None
        self._timer_phase: str | None = None

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self._limits.max_connections_per_client
        host = self.client[0] if self.client else None
        if cap and host is not None:
            if self._per_client[host] >= cap:
                message = (
                    f"this address already has {cap} connections open to the server, the most "
                    "it accepts from one client; reuse one (keep-alive) or retry later"
                )
                # Closed at once, not lingering: a flood of refused connections holds nothing.
                retry = ((b"retry-after", b"1"),)
                self._refuse(429, "too_many_connections", message, retry, linger=False)
                return
            self._per_client[host] += 1
            self._slot = host
        self._head_started = self.loop.time()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._stop_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The connection leaves this protocol (connection_lost will not be ours).
        self._release()
        self._stop_timer()
        super().handle_websocket_upgrade()

    def _release(self) -> None:
        if self._slot is not None:
            self._per_client[self._slot] -= 1
            if self._per_client[self._slot] <= 0:
                del self._per_client[self._slot]
            self._slot = None

    def data_received(self, data: bytes) -> None:
        # uvicorn's, with our refusals and the head's byte count.
        if self._refused:
            return  # lingering after a refusal: read and dropped
        self._unset_keepalive_if_required()
        was_in_head = self._in_head
        self._read = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if not self._refused:  # else one of our callbacks refused it and answered
                self._malformed(exc)
            return
        # Progress for the body clock: every byte read counts (a pipelined request's, and the head
        # read with the first of the body: at most RCS_MAX_HEADER_BYTES of credit).
        self._body_bytes += len(data)
        self._body_last = self.loop.time()
        if was_in_head and self._in_head:  # a read all inside the head
            self._head_reads += len(data)
            if self._head_reads > self._max_head_bytes:
                self._head_too_large()
                return
        if self._head_started is None and self._body_started is None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                # Bytes that began no request (blank lines) on an idle connection: they stopped
                # uvicorn's keep-alive timer, so the head's clock must run.
                self._head_started = self.loop.time()
        if self._head_started is not None or self._body_started is not None or self._timer_phase:
            self._watch()

    def send_400_response(self, msg: str) -> None:
        # uvicorn's callers of this (parser errors) come through _malformed; kept for any other.
        self._refuse(400, "bad_request", f"malformed HTTP request: {msg}")

    def _malformed(self, exc: httptools.HttpParserError) -> None:
        reason = str(exc).strip() if not isinstance(exc, httptools.HttpParserCallbackError) else ""
        message = f"malformed HTTP request: {reason}" if reason else "malformed HTTP request"
        self._refuse(400, "bad_request", message)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_first = self._read
        self._head_reads = self._header_count = 0
        if self._head_started is None:
            self._head_started = self.loop.time()

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's own with the count added, not a wrapper: it runs for every header of every
        # request, where a call through super() costs measurably.
        self._header_count += 1
        if self._header_count > self._max_headers:
            message = f"the request has more than {self._max_headers} header fields"
            self._refuse(431, "headers_too_large", message)
            raise _Refused
        name = name.lower()
        # llhttp keeps trailing whitespace, which RFC 9110 (5.5) excludes from the value.
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        # The head is at most the read it began in, the reads since and this one; counted
        # exactly only when that bound is over the limit (a large request, or a large head).
        if self._head_first + self._head_reads + self._read > self._max_head_bytes:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > self._max_head_bytes:
                self._head_too_large()
                raise _Refused
        self._in_head = False
        self._head_started = None
        self._body_started = self._body_last = self.loop.time()
        self._body_bytes = 0
        self._body_held = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._body_started = None
        super().on_message_complete()

    def _head_too_large(self) -> None:
        message = (
            f"the request's head (request line and headers) is over {self._max_head_bytes} bytes"
        )
        self._refuse(431, "headers_too_large", message)

    # Read timeouts

    def _watch(self) -> None:
        """Arm the read timer for what the connection now waits for (a head, a body, nothing);
        a request read whole in one go never arms one."""
        phase = (
            "head"
            if self._head_started is not None
            else "body"
            if self._body_started is not None
            else None
        )
        if phase == self._timer_phase or self.transport.is_closing():
            return
        self._stop_timer()
        self._timer_phase = phase
        if phase is not None:
            self._timer = self.loop.call_later(self._first_delay(phase), self._check)

    def _first_delay(self, phase: str) -> float:
        limits = self._limits
        return limits.header_timeout_s if phase == "head" else limits.body_timeout_s

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_phase = None

    def _check(self) -> None:
        self._timer = None
        if self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._head_started is not None:
            due = self._head_started + self._limits.header_timeout_s
            if now >= due:
                self._head_timed_out()
                return
        elif self._body_started is not None:
            held = self._server_holds_body()
            if held or self._body_held:
                # The client could not send (or could only just since the last look): its
                # clock starts again, a whole timeout from when the server let go.
                self._body_started = self._body_last = now
                self._body_bytes = 0
                self._body_held = held
                due = now + (SERVER_WAIT_POLL_S if held else self._limits.body_timeout_s)
            else:
                due = self._body_due()
                if now >= due:
                    self._body_timed_out()
                    return
        else:
            self._timer_phase = None
            return
        self._timer = self.loop.call_later(due - now, self._check)

    def _body_due(self) -> float:
        """When the body times out: ``body_timeout_s`` without a byte, or sooner than
        ``body_timeout_s`` plus one second per ``body_min_bytes_per_s`` bytes received."""
        limits = self._limits
        assert self._body_started is not None
        idle = self._body_last + limits.body_timeout_s
        if limits.body_min_bytes_per_s <= 0:
            return idle
        earned = self._body_bytes / limits.body_min_bytes_per_s
        return min(idle, self._body_started + limits.body_timeout_s + earned)

    def _server_holds_body(self) -> bool:
        """Whether the client cannot send because of us: reading paused until the app takes
        what came, or a 100-continue the app has not yet asked for."""
        cycle = self.cycle
        waiting = cycle is not None and cycle.waiting_for_100_continue
        return self.flow.read_paused or waiting

    def _head_timed_out(self) -> None:
        if not self._in_head:
            # Not a byte of a request: an idle connection, closed as keep-alive ones are.
            self.transport.close()
            return
        seconds = f"{self._limits.header_timeout_s:g}"
        self._refuse(408, "request_timeout", f"the request head did not arrive within {seconds} s")

    def _body_timed_out(self) -> None:
        limits = self._limits
        message = (
            f"the request body did not arrive in time: nothing came for "
            f"{limits.body_timeout_s:g} s, or it came slower than "
            f"{limits.body_min_bytes_per_s:g} bytes/s"
        )
        self._refuse(408, "request_timeout", message)

    # Refusals

    def _refuse(
        self,
        status: int,
        code: str,
        message: str,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        linger: bool = True,
    ) -> None:
        """Answer ``status`` in the error shape and end the connection, buffering no more."""
        self._refused = True
        self._stop_timer()
        client = "{}:{} - ".format(*self.client) if self.client else ""
        self.logger.warning("%s%d %s", client, status, message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A request the app is handling on this connection: its receive() ends as if the
            # client left, and whatever it still sends goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()  # an answer is half written: nothing more can be said
                return
        self.transport.write(self._error_bytes(status, code, message, headers))
        if linger:
            self._linger()
        else:
            self.transport.close()

    def _error_bytes(
        self, status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...]
    ) -> bytes:
        response = error_body(status, code, message, None)
        fields = [
            *self.server_state.default_headers,
            *response.raw_headers,
            *headers,
            (b"connection", b"close"),
        ]
        lines = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in fields)]
        return b"".join([*lines, b"\r\n", response.body])

    def _linger(self) -> None:
        if self.transport.is_closing() or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: those it may run on, fewer when its cgroup's CPU quota
    (``cpu.max``, cgroup v2: a container's ``--cpus``) allows fewer, rounded down, at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read: the affinity decides
    return cores


def cores_per_process(workers: int) -> int:
    """This machine's usable cores shared out over ``workers``."""
    return max(1, usable_cores() // workers)


# The project's own loggers, shown beside uvicorn's (its logging config names only its own, and
# without a handler of their own their INFO lines, such as which threads and engine each model
# was given when it loaded, went nowhere).
OWN_LOGGERS = ("service", "models")


def log_config(level: str | None) -> dict[str, Any]:
    """uvicorn's logging config, with the project's loggers at ``level`` (default info) on its
    stderr handler, each line naming its logger."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["named"] = {
        **config["formatters"]["default"],
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
    }
    config["handlers"]["named"] = {**config["handlers"]["default"], "formatter": "named"}
    for name in OWN_LOGGERS:
        config["loggers"][name] = {
            "handlers": ["named"],
            "level": (level or "info").upper(),
            "propagate": False,
        }
    return config


def serve(host: str, port: int, workers: int | None = None, log_level: str | None = None) -> None:
    """Run the API (settings from RCS_*) under uvicorn with ``ServiceHttpProtocol``."""
    settings = settings_from_env()  # a bad setting: one line naming it, before uvicorn starts
    from service.storage import check_storage  # the storage client: only in this process

    check_storage(settings)
    workers = workers or settings.api_workers
    if workers > 1 and settings.auto_migrate:
        # Once, here, rather than in every process at once (two migrations would race).
        from service.db.migrate import upgrade

        upgrade(settings.database_url)
        os.environ["RCS_AUTO_MIGRATE"] = "false"
    # Before torch loads OpenMP: its idle threads must sleep, not spin, or they starve the
    # threads that decode images and run other requests' passes (on CPU, p95 latency grew
    # twentyfold with spinning). An explicit setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if workers > 1 and settings.torch_threads == 0:
        # Several processes share the cores: each gets its share of torch (or ONNX Runtime)
        # threads, not all of them (2 processes of 2 threads on 2 cores fight over them in every
        # pass). The processes read it from here; OpenMP sizes its pool from the second.
        share = str(cores_per_process(workers))
        os.environ["RCS_TORCH_THREADS"] = share
        os.environ.setdefault("OMP_NUM_THREADS", share)
    import uvicorn

    options: dict[str, Any] = dict(
        app="service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # By name, not the class: with several workers the config is pickled to each process,
        # and unpickling the class there would import this module (FastAPI, the settings)
        # before the process answers the supervisor's health pings; under load that took
        # longer than the ping's timeout, and the supervisor killed and restarted its workers
        # in a loop. By name, uvicorn imports it where it loads the app.
        http=f"{__name__}:{ServiceHttpProtocol.__name__}",
        log_level=log_level,
        log_config=log_config(log_level),
    )
    if workers == 1 or not settings.api_reuse_port or not listen.supported():
        uvicorn.run(**options)
        return
    # Several processes and RCS_API_REUSE_PORT: uvicorn's supervisor, each worker on a socket of
    # its own (service/listen.py), so connections opened in a burst are spread over them.
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(**options)  # sets up uvicorn's logging
    try:
        sock = listen.placeholder(host, port)
    except OSError as exc:
        raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    logging.getLogger("uvicorn.error").info(
        "Uvicorn running on http://%s:%d, %d processes, one listening socket each",
        host,
        port,
        workers,
    )
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
