"""Regressions from review: inputs that gave 500s, wrong shapes, silent data loss or leaks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from models.train import SeededView
from service.context import AppContext
from service.errors import redact
from service.jobs import service as jobs
from service.jobs import state
from service.jobs.schemas import MAX_SEED
from service.registry import service as registry
from service.settings import Settings
from service.tasks import streams
from tests.service.support import b64, finetune_body, png_bytes, register_artifact


def test_auto_seed_stays_in_the_range_the_core_can_train_with(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    # The core's per-sample seed once overflowed torch for seeds past about 1.8M, and every
    # job with a large seed failed in the worker; it now hashes seeds into torch's range.
    body = finetune_body(dataset["id"])
    del body["seed"]
    seeds = [client.post("/finetune", json=body).json()["seed"] for _ in range(5)]
    assert all(0 <= s <= MAX_SEED for s in seeds)
    view = SeededView([(torch.zeros(1), 0, 10**9)], lambda image: image, seed=MAX_SEED)
    view.epoch = 1000
    assert view[0][1] == 0  # the largest seed we accept still seeds torch


def test_chunked_body_over_the_limit_is_413_not_500(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 1024 * 1024

    # No Content-Length: the limit counts the stream; the metrics middleware used to wrap the
    # limit's exception in an ExceptionGroup, which became a 500.
    response = client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    metrics = client.get("/metrics").text
    assert 'rcs_http_requests_total{method="POST",route="/predict",status="413"}' in metrics


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/models/shapes/versions/99999999999999999999", 422),
        ("/jobs/ftjob-x/events?after=ftevent-99999999999999999999", 404),
    ],
)
def test_huge_integers_are_client_errors(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status, response.text


def test_huge_or_odd_cursors_and_versions(client: TestClient, dataset: dict[str, Any]) -> None:
    job_id = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]
    for cursor in ("ftevent-99999999999999999999", "ftevent-²"):
        response = client.get(f"/jobs/{job_id}/events", params={"after": cursor})
        assert response.status_code == 422 and response.json()["error"]["param"] == "after"
    image = b64(png_bytes())
    response = client.post("/predict", json={"model": "m/99999999999999999999", "images": [image]})
    assert response.status_code == 404
    response = client.put("/models/m/aliases/a", json={"version": 2**40})
    assert response.status_code == 422 and response.json()["error"]["param"] == "version"


def test_framework_errors_use_our_error_shape(client: TestClient) -> None:
    missing = client.get("/no-such-route")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    method = client.delete("/jobs")
    assert method.status_code == 405 and method.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in method.headers["allow"]
    garbage = client.post(
        "/datasets/upload",
        content=b"garbage",
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    assert garbage.status_code == 400
    assert "malformed multipart body" in garbage.json()["error"]["message"]


def test_invalid_json_names_no_field(client: TestClient) -> None:
    bad = client.post("/datasets", content=b"{bad", headers={"content-type": "application/json"})
    error = bad.json()["error"]
    assert bad.status_code == 422 and error["param"] is None
    assert error["message"].startswith("the body is not valid JSON (at character 1)")
    empty = client.post("/datasets", content=b"", headers={"content-type": "application/json"})
    assert empty.json()["error"]["message"] == "a JSON request body is required"


def test_class_names_equal_after_trimming_are_refused(client: TestClient) -> None:
    body = {"name": "s", "descriptions": {"a": "first", "a ": "second"}}
    response = client.post("/descriptions", json=body)
    assert response.status_code == 422, response.text
    assert "are the same name" in response.json()["error"]["message"]


def test_upload_name_longer_than_the_column_is_422(client: TestClient) -> None:
    files = {"file": ("d.zip", b"PK", "application/zip")}
    response = client.post("/datasets/upload", data={"name": "a" * 201}, files=files)
    assert response.status_code == 422 and response.json()["error"]["param"] == "name"


def test_undecodable_image_message_is_readable(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "1" * 24)
    response = client.post("/predict", json={"model": "shapes", "images": [b64(b"hello")]})
    error = response.json()["error"]
    assert response.status_code == 422 and error["param"] == "images[0]"
    assert "not a recognised image format" in error["message"]
    assert "BytesIO" not in error["message"]


def test_pending_version_cannot_be_deleted(client: TestClient, ctx: AppContext) -> None:
    with ctx.sessions() as session:
        registry.begin_version(session, "m", "ftjob-" + "2" * 24, {})
    response = client.delete("/models/m/versions/1")
    assert response.status_code == 409 and "still being registered" in response.text


def test_settings_errors_do_not_print_secrets() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(
            env="production",
            database_url="postgresql://u:hunter2-password@db/x",
            bootstrap_api_key="short-secret",
        )
    assert "hunter2" not in str(info.value) and "short-secret" not in str(info.value)


def test_passwords_in_urls_are_redacted_from_job_errors(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any]
) -> None:
    assert redact("at postgresql+psycopg://rcs:s3cret@db:5432/rcs") == (
        "at postgresql+psycopg://rcs:***@db:5432/rcs"
    )
    job_id = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]
    with ctx.sessions() as session:
        state.fail(session, job_id, "queue_unavailable", "no broker at redis://:s3cret@r:6379/0")
    job = client.get(f"/jobs/{job_id}").json()
    events = client.get(f"/jobs/{job_id}/events").json()["data"]
    assert "s3cret" not in job["error"]["message"]
    assert all("s3cret" not in e["message"] for e in events)


def test_event_stream_keeps_the_events_committed_with_the_final_status(
    client: TestClient,
    ctx: AppContext,
    dataset: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]
    last = client.get(f"/jobs/{job_id}/events").json()["data"][-1]["id"]
    read_events = jobs.events
    finished = False

    def events_then_finish(*args: Any) -> Any:
        # The worker commits its last event with the terminal status right after this read.
        nonlocal finished
        result = read_events(*args)
        if not finished:
            finished = True
            with ctx.sessions() as session:
                state.cancel(session, job_id)
                state.add_event(session, job_id, "final words")
                session.commit()
        return result

    monkeypatch.setattr(jobs, "events", events_then_finish)
    monkeypatch.setattr(streams, "STREAM_POLL_S", 0.01)
    params = {"stream": "true", "after": last}
    with client.stream("GET", f"/jobs/{job_id}/events", params=params) as stream:
        text = "".join(stream.iter_text())
    assert "final words" in text and text.rstrip().endswith('{"status": "cancelled"}')
