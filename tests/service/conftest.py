"""An app on a temporary SQLite database with a fake broker, and a registered dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from service.settings import Settings
from tests.service.support import AUTH, FakeBroker, open_app, zeroshot_artifact


@pytest.fixture(scope="session")
def artifact_folder(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zeroshot_artifact(shapes_root, tmp_path_factory.mktemp("artifact") / "model")


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    with open_app(app_settings, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def ctx(client: TestClient) -> AppContext:
    context: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    return context


@pytest.fixture
def broker(ctx: AppContext) -> FakeBroker:
    fake: FakeBroker = ctx.broker  # type: ignore[assignment]
    return fake


@pytest.fixture
def dataset(client: TestClient, shapes_root: Path) -> dict[str, Any]:
    response = client.post("/datasets", json={"name": "shapes", "path": str(shapes_root)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def second_client(client: TestClient, ctx: AppContext) -> Iterator[TestClient]:
    """Another app on the same settings: what a second API process sees."""
    with open_app(ctx.settings, headers=AUTH) as other:
        yield other
