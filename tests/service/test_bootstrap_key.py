"""Starting without RCS_BOOTSTRAP_API_KEY (issue 22, item 13): the bootstrap key an earlier start
stored is revoked, as a changed setting revokes the previous key, unless it is the last active
admin key (then it stays valid, with a warning: no API could manage keys without one)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth.service import RevokedBootstrapKey, list_keys
from service.db.engine import make_engine, make_sessionmaker
from tests.service.support import API_KEY, make_settings


def start(tmp_path: Path, shapes_root: Path, bootstrap: str | None) -> dict[str, str | None]:
    """Start (and stop) the app on the database in ``tmp_path``; each key's state afterwards:
    its name, or None once revoked."""
    settings = make_settings(tmp_path, shapes_root, bootstrap_api_key=bootstrap)
    with TestClient(create_app(settings)):
        pass
    engine = make_engine(settings.database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return {k.id: None if k.revoked_at else k.name for k in list_keys(session)}
    finally:
        engine.dispose()


def status_with(tmp_path: Path, shapes_root: Path, key: str) -> int:
    settings = make_settings(tmp_path, shapes_root, bootstrap_api_key=None)
    with TestClient(create_app(settings)) as client:
        return client.get("/keys", headers={"X-API-Key": key}).status_code


def test_a_start_without_the_setting_revokes_the_previous_bootstrap_key(
    tmp_path: Path, shapes_root: Path
) -> None:
    [bootstrap_id] = start(tmp_path, shapes_root, API_KEY)
    settings = make_settings(tmp_path, shapes_root)
    with TestClient(create_app(settings)) as client:
        created = client.post(
            "/keys", json={"name": "ops", "scopes": ["admin"]}, headers={"X-API-Key": API_KEY}
        )
        assert created.status_code == 201, created.text
    keys = start(tmp_path, shapes_root, None)
    assert keys == {bootstrap_id: None, created.json()["id"]: "ops"}
    assert status_with(tmp_path, shapes_root, API_KEY) == 401
    assert status_with(tmp_path, shapes_root, created.json()["key"]) == 200
    # As with a changed key: the revoked one set again is presumed leaked, never revived.
    with pytest.raises(RevokedBootstrapKey, match=bootstrap_id):
        start(tmp_path, shapes_root, API_KEY)


def test_the_last_admin_key_is_kept_with_a_warning(
    tmp_path: Path, shapes_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    [bootstrap_id] = start(tmp_path, shapes_root, API_KEY)
    with caplog.at_level(logging.WARNING, logger="service.auth.service"):
        assert start(tmp_path, shapes_root, None) == {bootstrap_id: "bootstrap"}
    assert f"bootstrap key {bootstrap_id} is the only active admin key" in caplog.text
    assert status_with(tmp_path, shapes_root, API_KEY) == 200  # the operator is not locked out


def test_a_start_without_any_key_changes_nothing(tmp_path: Path, shapes_root: Path) -> None:
    assert start(tmp_path, shapes_root, None) == {}
    assert start(tmp_path, shapes_root, None) == {}
