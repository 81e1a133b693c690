"""An app on a temporary SQLite database with a fake broker, and a registered dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.context import AppContext
from tests.service.support import AUTH, FakeBroker, make_settings, zeroshot_artifact


@pytest.fixture(scope="session")
def artifact_folder(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zeroshot_artifact(shapes_root, tmp_path_factory.mktemp("artifact") / "model")


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def client(
    tmp_path: Path, shapes_root: Path, settings_overrides: dict[str, Any]
) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, shapes_root, **settings_overrides)
    with TestClient(create_app(settings)) as test_client:
        test_client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        test_client.headers.update(AUTH)
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
    with TestClient(create_app(ctx.settings)) as other:
        other.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        other.headers.update(AUTH)
        yield other
