"""Hostile connections against the real API process (``python -m service serve``): heads too
large, endless or with too many fields, trickled bodies, too many connections from one address,
malformed framing. None needs a key; each must be refused in the error shape without the
process buffering what it was sent, and the API must stay fast for everyone else.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.live import base_settings
from tests.reliability.conftest import record, rss_kib
from tests.reliability.raw_http import (
    Answer,
    connect,
    read_answer,
    refused,
    request,
    stream_until_answered,
    trickle_until_answered,
)
from tests.service.support import API_KEY
from tools.processes import Process, api_process, free_port, wait_ready

pytestmark = pytest.mark.slow  # one API process start: a torch import, 10-60 s when busy

BODY_TIMEOUT_S = 1.0
HEADER_TIMEOUT_S = 2.0
PER_CLIENT = 30
TRICKLERS = 20


@dataclass
class Api:
    port: int
    process: Process

    @property
    def pid(self) -> int:
        return self.process.pid

    def healthz_s(self) -> float:
        """Seconds a fresh ``GET /healthz`` took (asserting it was 200)."""
        started = time.perf_counter()
        response = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=30)
        assert response.status_code == 200, response.text
        return time.perf_counter() - started


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    workdir = tmp_path_factory.mktemp("http-limits")
    settings = {
        **base_settings(
            workdir,
            f"sqlite:///{workdir / 'rcs.db'}",
            f"sqla+sqlite:///{workdir / 'b.db'}",
            workdir,
        ),
        # The header limits at their defaults (32 KiB, 100 fields); the clocks short.
        "RCS_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "RCS_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "RCS_MAX_CONNECTIONS_PER_CLIENT": str(PER_CLIENT),
    }
    port = free_port()
    process = api_process(settings, port, workdir / "api.log").start()
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        yield Api(port, process)
    finally:
        process.stop()
    log = (workdir / "api.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def test_two_100_mib_headers_are_431_early_and_cost_no_memory(api: Api) -> None:
    total = 100 * 1024**2
    api.healthz_s()
    peak_before, rss_before = rss_kib(api.pid, "VmHWM"), rss_kib(api.pid)
    results: list[tuple[int, Answer | None, float]] = []

    def send_one() -> None:
        started = time.monotonic()
        with connect(api.port, timeout=60) as sock:
            head = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: "
            sent = stream_until_answered(sock, head, b"a" * 256 * 1024, total)
            results.append((sent, answer_or_none(sock, 30), time.monotonic() - started))

    threads = [threading.Thread(target=send_one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    healthz_s = api.healthz_s()
    peak_growth_mib = (rss_kib(api.pid, "VmHWM") - peak_before) / 1024
    rss_growth_mib = (rss_kib(api.pid) - rss_before) / 1024
    record(
        "huge_headers",
        connections=2,
        header_bytes_each=total,
        sent_before_431_mib=[round(sent / 1024**2, 1) for sent, _, _ in results],
        answered_after_s=[round(took, 2) for _, _, took in results],
        rss_before_mib=round(rss_before / 1024, 1),
        rss_growth_mib=round(rss_growth_mib, 1),
        peak_rss_growth_mib=round(peak_growth_mib, 1),
        healthz_after_s=round(healthz_s, 3),
    )
    assert len(results) == 2
    for sent, answer, _ in results:
        assert "over 32768 bytes" in refused(answer, 431, "headers_too_large")
        assert sent < total / 4, f"{sent} bytes went out before the answer"
    assert peak_growth_mib < 32, f"peak memory grew by {peak_growth_mib:.0f} MiB"


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (f"Authorization: Bearer {'k' * 1024**2}\r\n", "over 32768 bytes"),
        ("".join(f"X-H{i}: v\r\n" for i in range(20_000)), "more than 100 header fields"),
    ],
    ids=["1 MiB authorization", "20000 headers"],
)
def test_a_head_over_the_limits_is_431_and_the_next_request_is_fast(
    api: Api, head: str, says: str
) -> None:
    with connect(api.port) as sock:
        stream_until_answered(sock, request("/healthz", headers=head), b"", 0)
        answer = read_answer(sock)
    assert says in refused(answer, 431, "headers_too_large")
    record("big_head", case=says, healthz_after_s=round(api.healthz_s(), 3))


# What each trickled body starts with: valid so far, so the app keeps waiting for the rest.
BODY_STARTS = {
    "/predict": b'{"model": "shapes", "images": ["',
    "/datasets/upload": b'--x\r\nContent-Disposition: form-data; name="file"; filename="d.zip"'
    b"\r\nContent-Type: application/zip\r\n\r\nPK",
}


def trickle(api: Api, path: str, content_type: str) -> tuple[Answer | None, float]:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    body = BODY_STARTS[path].ljust(100_000, b"x")
    with connect(api.port, timeout=60) as sock:
        took = trickle_until_answered(sock, head, body, every_s=0.5, limit_s=40)
        return answer_or_none(sock, 5), took


def answer_or_none(sock: socket.socket, timeout: float) -> Answer | None:
    """The answer, or None where none came within ``timeout`` (as before the limits)."""
    try:
        return read_answer(sock, timeout)
    except TimeoutError:
        return None


def test_trickled_bodies_are_408_and_closed_while_others_stay_fast(api: Api) -> None:
    routes = [
        ("/predict", "application/json"),
        ("/datasets/upload", "multipart/form-data; boundary=x"),
    ]
    outcomes: list[tuple[Answer | None, float]] = []

    def one(i: int) -> None:
        outcomes.append(trickle(api, *routes[i % 2]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(TRICKLERS)]
    for thread in threads:
        thread.start()
    healthz = [api.healthz_s() for _ in range(5)]
    for thread in threads:
        thread.join(60)
    statuses = [answer.status if answer else None for answer, _ in outcomes]
    record(
        "trickled_bodies",
        connections=TRICKLERS,
        body_timeout_s=BODY_TIMEOUT_S,
        answered_408=statuses.count(408),
        ended_after_s_max=round(max(took for _, took in outcomes), 2),
        healthz_meanwhile_s_max=round(max(healthz), 3),
    )
    assert len(outcomes) == TRICKLERS
    for answer, took in outcomes:
        assert "did not arrive in time" in refused(answer, 408, "request_timeout")
        assert took < 40


def test_a_stalled_head_is_408(api: Api) -> None:
    with connect(api.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        answer = read_answer(sock, timeout=30)
    assert "head did not arrive" in refused(answer, 408, "request_timeout")


def test_one_connection_over_the_per_client_cap_is_429(api: Api) -> None:
    socks: list[socket.socket] = []
    try:
        for _ in range(PER_CLIENT):  # each served once, then idle in keep-alive
            sock = connect(api.port)
            socks.append(sock)
            sock.sendall(request("/healthz"))
            served = read_answer(sock, close_wait=0.05)
            assert served is not None and served.status == 200
        with connect(api.port) as extra:
            answer = read_answer(extra)
        assert f"{PER_CLIENT} connections open" in refused(answer, 429, "too_many_connections")
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.3)  # the server sees the closes
    api.healthz_s()


def test_conflicting_content_length_and_transfer_encoding_is_a_json_400(api: Api) -> None:
    with connect(api.port) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        answer = read_answer(sock)
    assert "malformed HTTP request" in refused(answer, 400, "bad_request")
