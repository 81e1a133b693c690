"""``GET /me``: the calling key's own id, name and scopes, and whether authentication is on."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.auth.service import create_key, hash_key
from service.context import AppContext
from service.db.tables import ApiKey, now
from tests.service.support import API_KEY, AUTH


def _ctx(client: TestClient) -> AppContext:
    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    return ctx


def test_me_names_the_bootstrap_key_and_its_scopes(app_client: TestClient) -> None:
    response = app_client.get("/me", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    with _ctx(app_client).sessions() as session:
        row = session.query(ApiKey).filter(ApiKey.key_hash == hash_key(API_KEY)).one()
    assert body["object"] == "api_key" and body["id"] == row.id and body["name"] == row.name
    assert {"predict", "train"} <= set(body["scopes"]) and body["auth_enabled"] is True
    # Neither the key nor its hash comes back.
    assert API_KEY not in response.text and row.key_hash not in response.text


def test_me_shows_a_predict_key_only_its_scope(app_client: TestClient) -> None:
    with _ctx(app_client).sessions() as session:
        row, key = create_key(session, "dashboard viewer", ["predict"])
    body = app_client.get("/me", headers={"X-API-Key": key}).json()
    assert body["id"] == row.id and body["name"] == "dashboard viewer"
    assert body["scopes"] == ["predict"]


def test_me_refuses_missing_invalid_and_revoked_keys(app_client: TestClient) -> None:
    assert app_client.get("/me").status_code == 401
    assert app_client.get("/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    with _ctx(app_client).sessions() as session:
        row, key = create_key(session, "old", ["train"])
        session.get(ApiKey, row.id).revoked_at = now()  # type: ignore[union-attr]
        session.commit()
    revoked = app_client.get("/me", headers={"Authorization": f"Bearer {key}"})
    assert revoked.status_code == 401
    assert revoked.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "settings_overrides", [{"env": "local", "auth_disabled": True}], indirect=False
)
def test_me_says_when_authentication_is_disabled(
    app_client: TestClient, settings_overrides: dict[str, Any]
) -> None:
    body = app_client.get("/me").json()
    assert body["auth_enabled"] is False and body["id"] == "local"
    assert {"predict", "train"} <= set(body["scopes"])
