"""An app on a temporary SQLite database (no browser) for the dashboard's fast tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.support import open_app


@pytest.fixture
def app_client(app_settings: Settings) -> Iterator[TestClient]:
    """The app without any key set on the client: each test sends what it means to."""
    with open_app(app_settings, follow_redirects=False) as client:
        yield client
