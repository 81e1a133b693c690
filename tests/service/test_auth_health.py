"""API keys and scopes, settings refusal, health, readiness and metrics, the migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import create_engine

from service.__main__ import main as service_cli
from service.app import create_app
from service.auth.service import RevokedBootstrapKey, create_key, hash_key
from service.context import AppContext
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.db.tables import ApiKey, Base
from service.settings import Settings
from tests.service.support import API_KEY, FakeBroker, make_settings


def _key(ctx: AppContext, scopes: list[str]) -> dict[str, str]:
    with ctx.sessions() as session:
        _, key = create_key(session, "t", scopes)
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_hashed_at_rest(ctx: AppContext) -> None:
    with ctx.sessions() as session:
        row, key = create_key(session, "t", ["predict"])
        stored = session.get(ApiKey, row.id)
    assert stored is not None and stored.key_hash == hash_key(key) and key not in stored.key_hash


def test_missing_and_invalid_keys_are_401(client: TestClient) -> None:
    client.headers.pop("Authorization")
    missing = client.get("/jobs")
    assert missing.status_code == 401 and "missing API key" in missing.json()["error"]["message"]
    invalid = client.get("/jobs", headers={"Authorization": "Bearer nope"})
    assert invalid.status_code == 401 and "invalid" in invalid.json()["error"]["message"]
    assert client.get("/jobs", headers={"X-API-Key": API_KEY}).status_code == 200


def test_scopes(client: TestClient, ctx: AppContext, dataset: dict[str, Any]) -> None:
    predict_only = _key(ctx, ["predict"])
    train_only = _key(ctx, ["train"])
    forbidden = client.post("/finetune", json={}, headers=predict_only)
    assert forbidden.status_code == 403
    assert "'train' scope" in forbidden.json()["error"]["message"]
    for method, path in (("put", "/models/m/aliases/a"), ("delete", "/models/m/versions/1")):
        assert (
            client.request(method, path, json={"version": 1}, headers=predict_only).status_code
            == 403
        )
    assert client.post("/predict", json={}, headers=train_only).status_code == 403
    assert client.get("/jobs", headers=predict_only).status_code == 200  # reads need any key


@pytest.mark.parametrize("settings_overrides", [{"env": "local", "auth_disabled": True}])
def test_auth_can_be_off_in_local_development(client: TestClient) -> None:
    client.headers.pop("Authorization")
    assert client.get("/jobs").status_code == 200


@pytest.mark.parametrize(
    "values",
    [
        {"auth_disabled": True},
        {"bootstrap_api_key": "changeme"},
        {"bootstrap_api_key": "short"},
        {"database_url": "postgresql+psycopg://rcs:changeme@db/rcs"},
    ],
)
def test_production_settings_refuse_placeholders(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Settings(env="production", **values)
    Settings(env="local", **values)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCS_ALLOWED_DATASET_ROOTS", "/data/a,/data/b")
    monkeypatch.setenv("RCS_MAX_PREDICT_BYTES", "123")
    settings = Settings()
    assert settings.allowed_dataset_roots == [Path("/data/a"), Path("/data/b")]
    assert settings.max_predict_bytes == 123


def test_health_ready_metrics(client: TestClient, broker: FakeBroker) -> None:
    client.headers.pop("Authorization")
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    broker.fail = True
    down = client.get("/readyz")
    assert down.status_code == 503 and down.json()["checks"]["broker"].startswith("broker:")
    metrics = client.get("/metrics")
    assert 'rcs_http_requests_total{method="GET",route="/readyz",status="503"} 1.0' in metrics.text
    assert "/openapi.json" and client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_readiness_waits_for_the_default_model(tmp_path: Path, shapes_root: Path) -> None:
    settings = make_settings(tmp_path, shapes_root, default_model="missing-model")
    with TestClient(create_app(settings)) as client:
        client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        import time

        deadline = time.monotonic() + 10
        while client.app.state.ctx.default_model_error is None and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "no model 'missing-model'" in ready.json()["checks"]["default_model"]


def test_default_model_loaded_makes_ready(
    tmp_path: Path, shapes_root: Path, artifact_folder: Path
) -> None:
    from service.db.engine import make_engine, make_sessionmaker
    from service.storage import ArtifactStore
    from tests.service.support import register_artifact

    settings = make_settings(tmp_path, shapes_root, default_model="shapes@champion")
    upgrade(settings.database_url)
    with make_sessionmaker(make_engine(settings.database_url))() as session:
        store = ArtifactStore.of(settings)
        register_artifact(session, store, "shapes", artifact_folder, "ftjob-" + "b" * 24)
        from service.registry.service import set_alias

        set_alias(session, "shapes", "champion", 1)
    with TestClient(create_app(settings)) as client:
        client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        import time

        deadline = time.monotonic() + 20
        while not client.app.state.ctx.default_model_ready and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200
        assert ("shapes", 1) in client.app.state.ctx.models.keys()  # type: ignore[attr-defined]


def test_migrations_match_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    with create_engine(url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_body_limit_applies_to_plain_json_routes(client: TestClient) -> None:
    response = client.post(
        "/descriptions",
        content=b"{" + b" " * (2 * 1024 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413


def test_admin_lists_creates_and_revokes_keys(client: TestClient, ctx: AppContext) -> None:
    created = client.post("/keys", json={"name": "ci", "scopes": ["train", "predict"]})
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["scopes"] == ["predict", "train"] and new["key"].startswith("rcs_")
    assert client.get("/jobs", headers={"X-API-Key": new["key"]}).status_code == 200

    listed = client.get("/keys").json()["data"]
    assert [k["name"] for k in listed] == ["bootstrap", "ci"]
    assert listed[0]["bootstrap"] is True and listed[0]["scopes"] == ["admin", "predict", "train"]
    text = client.get("/keys").text
    with ctx.sessions() as session:
        hashes = [row.key_hash for row in session.query(ApiKey)]
    # Neither the keys nor their hashes are ever listed.
    assert API_KEY not in text and new["key"] not in text and not any(h in text for h in hashes)
    assert set(listed[1]) == {
        "id",
        "object",
        "name",
        "scopes",
        "created_at",
        "revoked_at",
        "bootstrap",
    }

    revoked = client.delete(f"/keys/{new['id']}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = client.get("/jobs", headers={"X-API-Key": new["key"]})
    assert refused.status_code == 401  # at once, not at the next start
    assert client.delete(f"/keys/{new['id']}").json() == revoked.json()  # again: unchanged
    active = client.get("/keys", params={"include_revoked": False}).json()["data"]
    assert [k["name"] for k in active] == ["bootstrap"]
    assert client.delete("/keys/key-nope").status_code == 404


def test_keys_need_the_admin_scope(client: TestClient, ctx: AppContext) -> None:
    train_and_predict = _key(ctx, ["train", "predict"])
    for method, path in (("get", "/keys"), ("post", "/keys"), ("delete", "/keys/key-x")):
        response = client.request(method, path, json={"name": "x"}, headers=train_and_predict)
        assert response.status_code == 403, (method, path)
        assert "'admin' scope" in response.json()["error"]["message"]
    bad = client.post("/keys", json={"name": "x", "scopes": ["root"]})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "scopes"


def test_the_last_admin_key_cannot_be_revoked(client: TestClient, ctx: AppContext) -> None:
    [bootstrap] = client.get("/keys").json()["data"]
    refused = client.delete(f"/keys/{bootstrap['id']}")
    assert (
        refused.status_code == 409 and "last active admin key" in refused.json()["error"]["message"]
    )
    assert client.get("/keys").status_code == 200  # still valid

    second = client.post("/keys", json={"name": "admin2", "scopes": ["admin"]}).json()
    assert client.delete(f"/keys/{bootstrap['id']}").status_code == 200
    assert client.get("/keys").status_code == 401  # the bootstrap key itself is gone
    as_second = {"Authorization": f"Bearer {second['key']}"}
    refused = client.delete(f"/keys/{second['id']}", headers=as_second)
    assert refused.status_code == 409


def _start(tmp_path: Path, shapes_root: Path, bootstrap: str) -> dict[str, Any]:
    """Start the app on the database in ``tmp_path``; the keys it has, by name and state."""
    settings = make_settings(tmp_path, shapes_root, bootstrap_api_key=bootstrap)
    with TestClient(create_app(settings)) as client:
        response = client.get("/keys", headers={"X-API-Key": bootstrap})
        assert response.status_code == 200, response.text
        return {k["id"]: k for k in response.json()["data"]}


def test_a_changed_bootstrap_key_replaces_the_previous_one(
    tmp_path: Path, shapes_root: Path
) -> None:
    old, new = "rcs_first_bootstrap_key_00000001", "rcs_second_bootstrap_key_0000002"
    first = _start(tmp_path, shapes_root, old)
    assert _start(tmp_path, shapes_root, old) == first  # the same key: nothing changes
    second = _start(tmp_path, shapes_root, new)
    [old_id] = first
    assert second[old_id]["revoked_at"] is not None
    [(new_id, new_row)] = [(k, v) for k, v in second.items() if k != old_id]
    assert new_row["bootstrap"] and new_row["revoked_at"] is None
    settings = make_settings(tmp_path, shapes_root, bootstrap_api_key=new)
    with TestClient(create_app(settings)) as client:
        assert client.get("/jobs", headers={"X-API-Key": old}).status_code == 401
        assert client.get("/jobs", headers={"X-API-Key": new}).status_code == 200
    # A revoked key set again is presumed leaked: the API refuses to start with it.
    with pytest.raises(RevokedBootstrapKey, match=old_id):
        _start(tmp_path, shapes_root, old)


def test_a_bootstrap_key_stored_before_the_admin_scope_gains_it(
    tmp_path: Path, shapes_root: Path
) -> None:
    settings = make_settings(tmp_path, shapes_root)
    upgrade(settings.database_url)
    with make_sessionmaker(make_engine(settings.database_url))() as session:
        session.add(
            ApiKey(
                id="key-old",
                name="bootstrap",
                key_hash=hash_key(API_KEY),
                scopes="predict,train",
                bootstrap=True,
            )
        )
        session.commit()
    keys = _start(tmp_path, shapes_root, API_KEY)
    assert list(keys) == ["key-old"] and keys["key-old"]["scopes"] == ["admin", "predict", "train"]


def test_cli_lists_and_revokes_keys(
    tmp_path: Path,
    shapes_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RCS_ENV", "local")
    monkeypatch.setenv("RCS_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    service_cli(["create-key", "--name", "ops", "--scopes", "admin"])
    service_cli(["create-key", "--name", "ci", "--scopes", "predict,train"])
    ci_id, ci_key = capsys.readouterr().out.splitlines()[-1].split(" (predict,train): ")
    service_cli(["list-keys"])
    listing = capsys.readouterr().out
    assert "ops\tadmin\t" in listing and f"{ci_id}\tci\tpredict,train\t" in listing
    assert ci_key not in listing and hash_key(ci_key) not in listing
    service_cli(["revoke-key", ci_id])
    assert "revoked at" in capsys.readouterr().out
    service_cli(["list-keys"])
    [ci_line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith(ci_id)]
    assert ci_line.split("\t")[4] != "-"
    with pytest.raises(SystemExit, match="no API key"):
        service_cli(["revoke-key", "key-missing"])
    ops_id = listing.split("\tops\t")[0].splitlines()[-1]
    with pytest.raises(SystemExit, match="last active admin key"):
        service_cli(["revoke-key", ops_id])


def test_the_schema_declares_the_key_schemes_and_protected_operations_use_them(
    client: TestClient,
) -> None:
    # /docs' Authorize button needs both: the schemes, and each operation naming them.
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer <key>`",
    }
    header = schemes["APIKeyHeader"]
    assert (header["type"], header["in"], header["name"]) == ("apiKey", "header", "X-API-Key")
    public = set()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            security = operation.get("security")
            if security is None:
                public.add(path)
            else:
                assert security == [{"HTTPBearer": []}, {"APIKeyHeader": []}], (method, path)
            names = {p["name"].lower() for p in operation.get("parameters", [])}
            assert not names & {"authorization", "x-api-key"}, (method, path)
    # The Open Inference Protocol's server metadata and health, public as /healthz and /readyz.
    assert public == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
    }
