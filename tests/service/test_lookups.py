"""The lookup caches (service/lookups.py): /predict checks its key and resolves its model without
the database while an entry is fresh, and no withdrawal is ever served once it is answered, in
this process or another one on the same database."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from service.auth.service import Principal
from service.context import AppContext
from service.lookups import Lookups, Resolved, TTLCache
from tests.service.support import b64, png_bytes, register_artifact


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"lookup_cache_s": 1.0}  # the default


def register(ctx: AppContext, folder: Path, name: str = "m") -> int:
    with ctx.sessions() as session:
        return register_artifact(session, ctx.store, name, folder, f"ftjob-{uuid.uuid4().hex[:24]}")


@pytest.fixture
def statements(ctx: AppContext) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs from now on."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(ctx.engine, "before_cursor_execute", record)
    yield seen
    event.remove(ctx.engine, "before_cursor_execute", record)


def predict(client: TestClient, ref: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": ref, "images": [b64(png_bytes())]}
    return client.post("/predict", json=body, headers=headers)


def create_key(client: TestClient, scopes: list[str]) -> tuple[str, str]:
    response = client.post("/keys", json={"name": "k", "scopes": scopes})
    assert response.status_code == 201, response.text
    return response.json()["id"], response.json()["key"]


def test_a_repeated_predict_reads_nothing_from_the_database(
    client: TestClient, ctx: AppContext, artifact_folder: Path, statements: list[str]
) -> None:
    register(ctx, artifact_folder, "m")
    assert client.put("/models/m/aliases/prod", json={"version": 1}).status_code == 200
    _, key = create_key(client, ["predict"])
    # Entries that cannot expire during the test, however slow the machine.
    ctx.lookups.principals.ttl_s = ctx.lookups.refs.ttl_s = 600
    before = len(statements)
    assert predict(client, "m@prod", key).status_code == 200  # looks up the key and the alias
    looked_up = len(statements)
    assert looked_up > before
    for _ in range(5):
        assert predict(client, "m@prod", key).status_code == 200
    assert len(statements) == looked_up


def test_with_the_cache_off_every_request_reads_the_database(
    client: TestClient, ctx: AppContext, artifact_folder: Path, statements: list[str]
) -> None:
    register(ctx, artifact_folder, "m")
    ctx.lookups.principals.ttl_s = ctx.lookups.refs.ttl_s = 0
    assert predict(client, "m").status_code == 200  # loads the model
    for _ in range(2):
        before = len(statements)
        assert predict(client, "m").status_code == 200
        assert len(statements) - before >= 2  # the key and the version, every time


def test_a_revoked_key_is_refused_by_every_process_once_the_revoke_is_answered(
    client: TestClient, second_client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    register(ctx, artifact_folder, "m")
    key_id, key = create_key(client, ["predict"])
    assert predict(client, "m", key).status_code == 200  # both processes now hold the key
    assert predict(second_client, "m", key).status_code == 200
    assert second_client.delete(f"/keys/{key_id}").status_code == 200  # revoked through B
    assert predict(second_client, "m", key).status_code == 401
    assert predict(client, "m", key).status_code == 401  # A had it cached: refused all the same


def test_a_scope_is_checked_on_a_cached_key(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    _, key = create_key(client, ["predict"])
    register(ctx, artifact_folder, "m")
    assert predict(client, "m", key).status_code == 200
    refused = client.get("/keys", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 403
    assert "'admin'" in refused.json()["error"]["message"]


def test_a_moved_alias_is_served_by_every_process_once_the_move_is_answered(
    client: TestClient, second_client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    assert [register(ctx, artifact_folder, "m") for _ in range(2)] == [1, 2]
    assert client.put("/models/m/aliases/prod", json={"version": 1}).status_code == 200
    assert predict(client, "m@prod").json()["model"] == "m/1"
    assert predict(second_client, "m@prod").json()["model"] == "m/1"
    assert second_client.put("/models/m/aliases/prod", json={"version": 2}).status_code == 200
    assert predict(client, "m@prod").json()["model"] == "m/2"
    assert second_client.delete("/models/m/aliases/prod").status_code == 204
    assert predict(client, "m@prod").status_code == 404


def test_a_new_version_is_served_by_bare_name_within_the_cache_time(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    register(ctx, artifact_folder, "m")
    assert predict(client, "m").json()["model"] == "m/1"
    register(ctx, artifact_folder, "m")  # as a worker does, through its own session
    assert predict(client, "m").json()["model"] == "m/2"  # this process committed it: cleared


def test_entries_expire_and_a_lookup_older_than_a_clear_is_not_stored() -> None:
    lookups = Lookups(ttl_s=60)
    principal = Principal("key_1", frozenset({"predict"}))
    generation = lookups.generation  # a lookup reads the database...
    lookups.clear()  # ...a commit changes keys meanwhile...
    lookups.remember_principal("secret", principal, generation)  # ...its result is stale
    assert lookups.principal("secret") is None
    lookups.remember_principal("secret", principal, lookups.generation)
    assert lookups.principal("secret") == principal
    lookups.remember_ref("m", Resolved("m", 1, "1:abc"), lookups.generation)
    assert lookups.refs.get("m") == Resolved("m", 1, "1:abc")
    short: TTLCache[str, int] = TTLCache(ttl_s=0.05)
    short.put("a", 1)
    threading.Event().wait(0.1)
    assert short.get("a") is None
    assert len(short) == 0


def test_an_entry_is_refreshed_by_one_caller_from_half_its_life_and_never_served_past_it() -> None:
    now = [0.0]
    cache: TTLCache[str, int] = TTLCache(ttl_s=10, clock=lambda: now[0])
    cache.put("k", 1)
    now[0] = 4.9
    assert cache.get("k") == 1
    now[0] = 5.0  # half its life: the first caller looks it up again, the others still get it
    assert [cache.get("k") for _ in range(3)] == [None, 1, 1]
    cache.put("k", 2)  # the refresh, stored: a new life
    now[0] = 9.9
    assert cache.get("k") == 2
    now[0] = 10.0
    assert [cache.get("k") for _ in range(2)] == [None, 2]  # refreshed once more, not answered
    now[0] = 15.0  # that refresh failed: the entry expires at its time, for every caller
    assert [cache.get("k") for _ in range(2)] == [None, None]


def test_the_cache_is_bounded() -> None:
    cache: TTLCache[int, int] = TTLCache(ttl_s=60, max_entries=3)
    for i in range(5):
        cache.put(i, i)
    assert len(cache) == 3
    assert cache.get(0) is None and cache.get(4) == 4
