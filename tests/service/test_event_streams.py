"""Event streams in-process: the caps (429 with ``Retry-After``), ``Last-Event-ID``, ``id:``
lines, and the slot given back however a stream ends. Many concurrent streams against the real
server process: ``tests/reliability/test_streams.py``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

from service.auth.service import authenticate
from service.context import AppContext
from service.db.engine import make_sessionmaker
from service.jobs import service as jobs
from service.tasks import streams
from tests.service.support import API_KEY, finetune_body


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"stream_max_per_key": 2, "stream_max_total": 3}


def cancelled_job(client: TestClient, dataset: dict[str, Any]) -> str:
    job_id: str = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    return job_id


def stream_text(client: TestClient, job_id: str, **headers: str) -> str:
    url = f"/jobs/{job_id}/events"
    with client.stream("GET", url, params={"stream": "true"}, headers=headers) as response:
        assert response.status_code == 200
        return "".join(response.iter_text())


def ids(text: str) -> list[str]:
    return [line.removeprefix("id: ") for line in text.splitlines() if line.startswith("id: ")]


def open_gauge(client: TestClient) -> str:
    lines = client.get("/metrics").text.splitlines()
    return next(x for x in lines if x.startswith("rcs_event_streams_open ")).split()[1]


def own_key_id(ctx: AppContext) -> str:
    with ctx.sessions() as session:
        principal = authenticate(session, API_KEY)
    assert principal is not None
    return principal.key_id


def test_events_carry_ids_and_last_event_id_resumes_after_it(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    job_id = cancelled_job(client, dataset)
    whole = ids(stream_text(client, job_id))
    assert len(whole) == 3 and all(i.startswith("ftevent-") for i in whole)
    resumed = stream_text(client, job_id, **{"Last-Event-ID": whole[0]})
    assert ids(resumed) == whole[1:] and 'event: end\ndata: {"status": "cancelled"}' in resumed
    # The header wins over ?after=: a browser reconnects to the URL it first opened.
    url = f"/jobs/{job_id}/events"
    params = {"stream": "true", "after": whole[-1]}
    with client.stream("GET", url, params=params, headers={"Last-Event-ID": whole[1]}) as again:
        assert ids("".join(again.iter_text())) == whole[2:]


def test_a_bad_last_event_id_is_a_422_naming_the_header(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    job_id = cancelled_job(client, dataset)
    url = f"/jobs/{job_id}/events?stream=true"
    response = client.get(url, headers={"Last-Event-ID": "ftevent-x"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "Last-Event-ID"
    assert client.get("/jobs/ftjob-missing/events?stream=true").status_code == 404


def test_streams_past_the_per_key_cap_are_refused(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any]
) -> None:
    job_id = cancelled_job(client, dataset)
    key_id = own_key_id(ctx)
    for _ in range(2):  # two streams of this key held open elsewhere
        ctx.streams.acquire(key_id, 2, 3)
    response = client.get(f"/jobs/{job_id}/events", params={"stream": "true"})
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    error = response.json()["error"]
    assert error["code"] == "too_many_streams" and "this API key" in error["message"]
    assert error["param"] == "stream"
    # Plain pages are not streams: never capped.
    assert client.get(f"/jobs/{job_id}/events").status_code == 200
    ctx.streams.release(key_id)
    assert "event: end" in stream_text(client, job_id)


def test_streams_past_the_global_cap_are_refused(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any]
) -> None:
    job_id = cancelled_job(client, dataset)
    for key in ("key-a", "key-b", "key-c"):
        ctx.streams.acquire(key, 2, 3)
    response = client.get(f"/jobs/{job_id}/events", params={"stream": "true"})
    assert response.status_code == 429
    assert "3 event streams are open on this server" in response.json()["error"]["message"]


def test_a_finished_stream_gives_its_slot_back(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any]
) -> None:
    job_id = cancelled_job(client, dataset)
    for _ in range(5):  # more than the per-key cap of 2: each one's slot came back
        assert "event: end" in stream_text(client, job_id)
    assert ctx.streams.total == 0 and float(open_gauge(client)) == 0


def test_a_database_error_mid_stream_ends_it_with_an_error_event(
    client: TestClient,
    ctx: AppContext,
    dataset: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = cancelled_job(client, dataset)

    def database_gone(*_: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(jobs, "events", database_gone)
    text = stream_text(client, job_id)
    assert text.startswith("event: error\n") and "database_unavailable" in text
    assert "server closed" not in text  # the driver's words stay in the log
    assert ctx.streams.total == 0


def test_an_idle_stream_polls_less_often_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # 100 quiet streams at the busy pace would cost 200 queries a second on a small database.
    monkeypatch.setattr(streams, "MAX_POLL_S", 0.08)
    times: list[float] = []

    def poll(cursor: int) -> streams.Batch:
        times.append(time.monotonic())
        return streams.Batch([], "cancelled" if len(times) == 7 else "running", False)

    async def drain() -> list[str]:
        slots = streams.StreamSlots()
        return [f async for f in streams.event_stream(poll, 0, ("cancelled",), slots, 0.01)]

    frames = asyncio.run(drain())
    assert frames == ['event: end\ndata: {"status": "cancelled"}\n\n']
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Sleeps are never shorter than asked: 0.01, 0.02, 0.04, then 0.08 at most.
    for gap, floor in zip(gaps, (0.01, 0.02, 0.04, 0.08, 0.08, 0.08), strict=True):
        assert gap >= floor * 0.95, gaps


def test_an_exhausted_connection_pool_is_a_503_not_a_500(
    client: TestClient, ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pool of one whose connection is taken: the next request waits out the pool's timeout.
    engine = create_engine(ctx.settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    monkeypatch.setattr(ctx, "sessions", make_sessionmaker(engine))
    with engine.connect():
        response = client.get("/jobs")
    engine.dispose()
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "database_busy"
