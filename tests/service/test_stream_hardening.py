"""Event streams that outlive their key or replay a long history (issue 22, items 5 and 10).

A stream re-checks the key it was opened with, through the lookup cache the requests use: once
``DELETE /keys/{id}`` has answered, in this process or another one, the stream sends an
``error`` event and closes, and nothing added to the job after the answer reaches it. A history
of thousands of events is sent batch after batch without the poll's pause between full batches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from service.db.tables import JobEvent
from service.jobs import router as jobs_router
from service.jobs import service as jobs
from service.tasks import streams
from tests.service.support import finetune_body

NEW = "added after the revoke was answered"


def add_events(ctx: AppContext, job_id: str, count: int, message: str = "replayed") -> None:
    with ctx.sessions() as session:
        session.add_all(
            JobEvent(job_id=job_id, level="info", type="message", message=f"{message} {i}")
            for i in range(count)
        )
        session.commit()


def new_key(client: TestClient) -> tuple[str, str]:
    response = client.post("/keys", json={"name": "streamer", "scopes": ["predict"]})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


def frames(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """The stream's events as {field: value}, each as soon as its blank line arrives."""
    current: dict[str, str] = {}
    for line in lines:
        if not line:
            if current:
                yield current
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = value


@pytest.mark.parametrize("revoked_by", ["this process", "another process"])
def test_a_revoked_keys_stream_closes_and_gets_nothing_added_after_the_revoke(
    client: TestClient,
    ctx: AppContext,
    dataset: dict[str, Any],
    revoked_by: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = client if revoked_by == "this process" else request.getfixturevalue("second_client")
    key_id, key = new_key(client)
    job_id = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]  # queued
    polls: list[bool] = []  # one entry per poll of the stream: was the revoke answered yet?
    answered = False
    real_events = jobs.events

    def counted(*args: Any) -> Any:
        polls.append(answered)
        return real_events(*args)

    monkeypatch.setattr(jobs, "events", counted)
    url = f"/jobs/{job_id}/events"
    headers = {"Authorization": f"Bearer {key}"}
    seen: list[dict[str, str]] = []
    with client.stream("GET", url, params={"stream": "true"}, headers=headers) as response:
        assert response.status_code == 200
        events = frames(response.iter_lines())
        seen += [next(events), next(events)]  # validated, queued: the key was accepted
        assert admin.delete(f"/keys/{key_id}").status_code == 200
        answered = True
        add_events(ctx, job_id, 3, NEW)
        for event in events:  # before the fix: the new events came, and the stream went on
            seen.append(event)
            if NEW in event.get("data", ""):
                break
    assert not any(NEW in e.get("data", "") for e in seen), seen
    last = seen[-1]
    assert last["event"] == "error", seen
    error = json.loads(last["data"])["error"]
    assert error["code"] == "invalid_api_key" and "revoked" in error["message"]
    # It noticed at its first poll after the answer at the latest (the cache time had passed).
    assert polls.count(True) <= 1, polls
    assert ctx.streams.total == 0  # its slot came back
    again = client.get(url, params={"stream": "true"}, headers=headers)
    assert again.status_code == 401  # a reconnect is refused


def test_a_stream_in_local_mode_needs_no_key() -> None:
    from service.auth.deps import key_check

    local: Any = SimpleNamespace(settings=SimpleNamespace(auth_disabled=True))
    assert asyncio.run(key_check(local, None)()) is True  # never looks a key up


def test_a_long_history_is_replayed_without_pausing_between_full_batches(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    add_events(ctx, job_id, 5000)
    pauses: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        if delay > 0:  # anyio's checkpoints sleep(0): not the stream's pause
            pauses.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    poll = partial(jobs_router._poll, ctx, job_id)

    async def replay() -> list[str]:
        slots = streams.StreamSlots()
        stream = streams.event_stream(poll, 0, ("cancelled",), slots, streams.STREAM_POLL_S)
        return [f async for f in stream]

    text = "".join(asyncio.run(replay()))
    ids = [line for line in text.splitlines() if line.startswith("id: ")]
    assert len(ids) == 5003 and text.endswith('event: end\ndata: {"status": "cancelled"}\n\n')
    # Before the fix: a pause after each of the 11 batches of 500, about 800 events a second.
    assert len(pauses) <= 1, pauses
