"""``ServiceHttpProtocol`` (service/server.py) in a real uvicorn server on a free port, in this
process, serving a tiny app that reads the whole body and answers its length; small limits so
each refusal comes within a second. The real API process gets the same protocol
(tests/reliability/test_http_limits.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from pydantic import ValidationError

from service.server import HttpLimits, ServiceHttpProtocol
from service.settings import Settings
from tests.reliability.raw_http import (
    Answer,
    connect,
    read_answer,
    refused,
    request,
    stream_until_answered,
    trickle_until_answered,
)
from tools.processes import free_port

LIMITS = HttpLimits(
    max_header_bytes=8192,
    max_headers=50,
    header_timeout_s=1.0,
    body_timeout_s=1.0,
    body_min_bytes_per_s=100.0,
    max_connections_per_client=4,
)


class SmallLimits(ServiceHttpProtocol):
    limits = LIMITS


async def length_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body (after a pause on /slow) and answers its length."""
    if scope["path"] == "/slow":
        await asyncio.sleep(2 * LIMITS.body_timeout_s + 0.5)
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = f'{{"bytes": {size}}}'.encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        length_app, host="127.0.0.1", port=port, http=SmallLimits, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield port
    server.should_exit = True
    thread.join(10)


def ask(port: int, data: bytes, close_wait: float = 1.0) -> Answer:
    with connect(port) as sock:
        sock.sendall(data)
        answer = read_answer(sock, close_wait=close_wait)
    assert answer is not None, "closed without an answer"
    return answer


def test_an_endless_header_is_431_long_before_its_end(port: int) -> None:
    total = 64 * 1024**2
    with connect(port) as sock:
        head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: "
        sent = stream_until_answered(sock, head, b"a" * 65536, total)
        answer = read_answer(sock)
    assert "over 8192 bytes" in refused(answer, 431, "headers_too_large")
    assert sent < total / 4, f"{sent} bytes went out before the answer"


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (f"Authorization: Bearer {'k' * 1024**2}\r\n", "over 8192 bytes"),
        ("".join(f"X-H{i}: v\r\n" for i in range(20_000)), "more than 50 header fields"),
        ("Cookie: c\r\n" * 51, "more than 50 header fields"),
    ],
    ids=["1 MiB authorization", "20000 headers", "51 repeated headers"],
)
def test_a_head_over_the_limits_is_431(port: int, head: str, says: str) -> None:
    with connect(port) as sock:
        sent = stream_until_answered(sock, request(headers=head), b"", 0)
        answer = read_answer(sock)
    assert sent > 0
    assert says in refused(answer, 431, "headers_too_large")


def test_a_long_url_counts_against_the_head(port: int) -> None:
    answer = ask(port, request(path="/" + "u" * 9000))
    assert "over 8192 bytes" in refused(answer, 431, "headers_too_large")


def test_a_head_just_under_the_limit_and_a_body_in_the_same_read_are_served(port: int) -> None:
    body = b"b" * 200_000
    answer = ask(port, request("/", "POST", f"X-Pad: {'p' * 7000}\r\n", body), close_wait=0.1)
    assert answer.status == 200 and answer.body == b'{"bytes": 200000}'


def test_a_trickled_body_is_408_and_closed(port: int) -> None:
    with connect(port) as sock:
        head = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n"
        took = trickle_until_answered(sock, head, b"x" * 1000, every_s=0.05, limit_s=20)
        answer = read_answer(sock)
    assert "did not arrive in time" in refused(answer, 408, "request_timeout")
    assert took < 20


def test_a_stalled_head_is_408_and_a_silent_connection_is_closed(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        answer = read_answer(sock, timeout=20)
    assert "head did not arrive within 1 s" in refused(answer, 408, "request_timeout")
    with connect(port) as sock:
        assert read_answer(sock, timeout=20) is None  # closed, no answer to a silence


def test_blank_lines_do_not_keep_a_connection_open(port: int) -> None:
    with connect(port) as sock:
        sock.sendall(request())
        assert read_answer(sock, close_wait=0.1) is not None
        sock.settimeout(0.3)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"\r\n")
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            pytest.fail("still open after 20 s of blank lines")


def test_a_steady_body_longer_than_the_timeout_is_served(port: int) -> None:
    # 20 KB/s for 2 s: far above the floor, twice the body timeout in all.
    with connect(port) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 40000\r\n\r\n")
        for _ in range(40):
            sock.sendall(b"s" * 1000)
            time.sleep(0.05)
        answer = read_answer(sock, close_wait=0.1)
    assert answer is not None and answer.status == 200, answer
    assert answer.body == b'{"bytes": 40000}'


def test_a_body_the_app_is_slow_to_ask_for_is_not_timed_out(port: int) -> None:
    # Expect: 100-continue: the client sends its body only once the app asks (after 2.5 body
    # timeouts): the wait is the server's, not the client's.
    with connect(port) as sock:
        sock.sendall(
            b"POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        sock.settimeout(10)
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"hello")
        answer = read_answer(sock, close_wait=0.1)
    assert answer is not None and answer.status == 200, answer


def test_one_connection_over_the_per_client_cap_is_429(port: int) -> None:
    socks = [connect(port) for _ in range(LIMITS.max_connections_per_client)]
    try:
        for sock in socks:  # each served once and kept alive
            sock.sendall(request())
            served = read_answer(sock, close_wait=0.2)
            assert served is not None and served.status == 200 and not served.closed
        with connect(port) as extra:
            answer = read_answer(extra)
        assert "4 connections open" in refused(answer, 429, "too_many_connections")
        assert answer is not None and answer.headers["retry-after"] == "1"
    finally:
        socks.pop().close()
    try:
        time.sleep(0.2)  # the server sees the close
        assert ask(port, request(), close_wait=0.1).status == 200  # a slot is free again
    finally:
        for sock in socks:
            sock.close()


def test_conflicting_content_length_and_transfer_encoding_is_a_json_400(port: int) -> None:
    answer = ask(
        port,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    )
    message = refused(answer, 400, "bad_request")
    assert message.startswith("malformed HTTP request: ") and "Transfer-Encoding" in message


def test_a_normal_request_is_served_after_the_refusals(port: int) -> None:
    answer = ask(port, request("/", "POST", body=b"0123456789"), close_wait=0.5)
    assert answer.status == 200 and answer.body == b'{"bytes": 10}'
    assert not answer.closed  # kept alive


def test_the_limits_are_settings_validated_at_start() -> None:
    limits = HttpLimits.from_settings(Settings(env="local", max_header_bytes=16384))
    assert limits.max_header_bytes == 16384 and limits.max_connections_per_client == 128
    bad_values: list[dict[str, Any]] = [
        {"max_header_bytes": 100},
        {"max_headers": 0},
        {"body_timeout_s": 0},
        {"max_connections_per_client": -1},
    ]
    for bad in bad_values:
        with pytest.raises(ValidationError):
            Settings(env="local", **bad)


def test_uvicorns_own_command_line_can_name_the_protocol() -> None:
    # `uvicorn --factory service.app:app_from_env --http service.server:ServiceHttpProtocol`
    config = uvicorn.Config(length_app, http="service.server:ServiceHttpProtocol")
    config.load()
    assert config.http_protocol_class is ServiceHttpProtocol
