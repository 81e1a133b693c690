"""HTTP over a raw socket, for requests no HTTP client library will send: huge or endless heads,
trickled bodies, conflicting framing headers."""

from __future__ import annotations

import json
import select
import socket
import time
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server closed the connection after it

    def error(self) -> dict[str, Any]:
        """The error object of our error shape (checks the shape)."""
        assert self.headers.get("content-type") == "application/json", self.headers
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert set(error) == {"code", "message", "param", "type"}, error
        return error


def refused(answer: Answer | None, status: int, code: str) -> str:
    """The message of ``answer``, checked to be a refusal: ``status`` and ``code`` in the error
    shape, the connection closed after it."""
    assert answer is not None, "closed without an answer"
    assert answer.status == status, (answer.status, answer.body[:300])
    error = answer.error()
    assert error["code"] == code, error
    assert answer.closed, "the connection stayed open after the refusal"
    message: str = error["message"]
    return message


def connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def read_answer(sock: socket.socket, timeout: float = 10, close_wait: float = 1.0) -> Answer | None:
    """The next answer on ``sock`` and whether the server closed the connection within
    ``close_wait`` seconds after it; None when the server closed without one."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = _recv(sock)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *fields = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        body += chunk
    sock.settimeout(close_wait)
    try:
        closed = _recv(sock) == b""
    except TimeoutError:
        closed = False
    return Answer(int(status_line.split()[1]), headers, body[:length], closed)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def stream_until_answered(
    sock: socket.socket, head: bytes, filler: bytes, total: int, limit_s: float = 60
) -> int:
    """Send ``head``, then ``filler`` again and again up to ``total`` bytes, stopping as soon as
    the server answers (or stops reading for ``limit_s``); the bytes sent."""
    sock.sendall(head)
    sent = len(head)
    deadline = time.monotonic() + limit_s
    sock.setblocking(False)
    try:
        while sent < total and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 1)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(filler[: total - sent])
                except BlockingIOError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
    finally:
        sock.setblocking(True)
    return sent


def trickle_until_answered(
    sock: socket.socket, head: bytes, body: bytes, every_s: float, limit_s: float
) -> float:
    """Send ``head`` and then ``body`` one byte every ``every_s`` until the server answers or
    ``limit_s`` passed; the seconds it took."""
    started = time.monotonic()
    sock.sendall(head)
    for i in range(len(body)):
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable or time.monotonic() - started > limit_s:
            break
        try:
            sock.sendall(body[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
    select.select([sock], [], [], max(0.0, limit_s - (time.monotonic() - started)))
    return time.monotonic() - started


def request(path: str = "/", method: str = "GET", headers: str = "", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method != "GET" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{length}{headers}\r\n".encode() + body
