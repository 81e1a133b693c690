"""An app on a temporary SQLite database (no browser) for the dashboard's fast tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.service.support import FakeBroker, make_settings


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def app_client(
    tmp_path: Path, shapes_root: Path, settings_overrides: dict[str, Any]
) -> Iterator[TestClient]:
    """The app without any key set on the client: each test sends what it means to."""
    settings = make_settings(tmp_path, shapes_root, **settings_overrides)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        yield client
