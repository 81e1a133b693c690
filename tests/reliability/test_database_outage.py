"""The database goes away for a while (a proxy in front of PostgreSQL is cut): the API answers
503 with a clear message, never a stack trace, and recovers by itself once it is back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from tests.live import postgres_database_or_skip
from tests.reliability.conftest import prepare_database, record
from tests.reliability.images import encode, noise
from tests.reliability.proxy import CuttableProxy
from tests.service.support import AUTH, FakeBroker, b64, make_settings


@pytest.fixture
def proxied(
    tmp_path: Path, shapes_root: Path, reliability_artifact: Path
) -> Iterator[tuple[TestClient, CuttableProxy]]:
    url, drop = postgres_database_or_skip()
    with CuttableProxy(("127.0.0.1", 5432)) as proxy:
        proxied_url = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        settings = make_settings(tmp_path, shapes_root, database_url=proxied_url)
        prepare_database(
            {
                "RCS_DATABASE_URL": proxied_url,
                "RCS_ARTIFACTS_URL": settings.artifacts_url,
                "RCS_WORK_DIR": str(settings.work_dir),
            },
            reliability_artifact,
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
            client.headers.update(AUTH)
            yield client, proxy
    drop()


def test_the_api_answers_503_while_the_database_is_away_and_recovers(
    proxied: tuple[TestClient, CuttableProxy],
) -> None:
    client, proxy = proxied
    image = {"model": "shapes", "images": [b64(encode(noise(), "PNG"))]}
    assert client.get("/jobs").status_code == 200
    assert client.post("/predict", json=image).status_code == 200
    requests = [
        ("GET", "/jobs", None),
        ("GET", "/models/shapes", None),
        ("GET", "/datasets", None),
        ("POST", "/descriptions", {"name": "d", "descriptions": {"a": "x"}}),
        ("POST", "/predict", image),
    ]
    proxy.cut()
    during = []
    for _ in range(2):
        for method, path, body in requests:
            response = client.request(method, path, json=body)
            during.append(response.status_code)
            assert response.status_code == 503, (path, response.text)
            error = response.json()["error"]
            assert error["code"] == "database_unavailable"
            assert "the database is unavailable" in error["message"]
            assert "Traceback" not in response.text and "psycopg" not in response.text
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"
    assert client.get("/healthz").status_code == 200  # alive, so it is not restarted

    proxy.restore()
    after = [client.request(m, p, json=b).status_code for m, p, b in requests]
    assert after == [200] * len(requests)
    assert client.get("/readyz").status_code == 200
    record(
        "database_outage",
        requests_during=len(during),
        answered_503=sum(s == 503 for s in during),
        server_errors_500=0,
        requests_after=len(after),
        ok_after=len(after),
        restarts=0,
    )
