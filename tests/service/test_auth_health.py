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

from service.app import create_app
from service.auth.service import create_key, hash_key
from service.context import AppContext
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
        store = ArtifactStore(settings.artifacts_url, settings.artifact_cache_dir)
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
