"""Shift monitoring through the real app and an in-process worker: the profile evaluation,
windows filled by /predict, the monitor view, feedback, gauges, events, restarts, errors."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.context import AppContext
from service.db.tables import MonitorImage
from service.monitor import store
from service.queue import TASK_EVALUATE
from service.settings import Settings
from tests.service.support import (
    AUTH,
    FakeBroker,
    b64,
    make_settings,
    open_app,
    png_bytes,
    register_artifact,
    worker_context,
)
from worker.evaluations import run_evaluation

JOB = "ftjob-" + "3" * 24
WINDOW = 8


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"monitor_window": WINDOW, "monitor_min_window": WINDOW, "monitor_flush_s": 0.05}


@pytest.fixture
def version(ctx: AppContext, artifact_folder: Path) -> int:
    with ctx.sessions() as session:
        return register_artifact(session, ctx.store, "shapes", artifact_folder, JOB)


def eventually(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def profiled(
    client: TestClient, broker: FakeBroker, settings: Settings, dataset: dict[str, Any]
) -> dict[str, Any]:
    """The profile evaluation asked for, sent, and run by a worker."""
    response = client.post(
        "/models/shapes/versions/1/monitor/profile", json={"dataset": dataset["id"]}
    )
    assert response.status_code == 200, response.text
    evaluation = response.json()
    assert evaluation["kind"] == "profile" and evaluation["splits"] == ["val"]
    assert broker.sent[-1] == (TASK_EVALUATE, {"payload": {"evaluation_id": evaluation["id"]}})
    waiting = client.get("/models/shapes/versions/1/monitor")
    assert waiting.status_code == 409 and evaluation["id"] in waiting.json()["error"]["message"]
    outcome = run_evaluation(worker_context(settings), evaluation["id"])
    assert outcome.status == "succeeded", outcome
    done: dict[str, Any] = client.get(f"/evaluations/{evaluation['id']}").json()
    return done


def predict(client: TestClient, images: list[bytes], monitor: bool = True) -> list[Any]:
    body = {"model": "shapes/1", "images": [b64(i) for i in images], "monitor": monitor}
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    data: list[Any] = response.json()["data"]
    return data


def val_images(shapes_root: Path) -> list[tuple[bytes, str]]:
    return [
        (path.read_bytes(), path.parent.name) for path in sorted((shapes_root / "val").glob("*/*"))
    ]


def monitor(client: TestClient) -> dict[str, Any]:
    response = client.get("/models/shapes/versions/1/monitor")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_no_profile_yet_says_how_to_make_one(
    client: TestClient, version: int, dataset: dict[str, Any]
) -> None:
    response = client.get("/models/shapes/versions/1/monitor")
    assert response.status_code == 409
    assert "POST /models/shapes/versions/1/monitor/profile" in response.json()["error"]["message"]
    # Not trained here: the dataset must be named.
    refused = client.post("/models/shapes/versions/1/monitor/profile", json={})
    assert refused.status_code == 422 and refused.json()["error"]["param"] == "dataset"
    bad_split = client.post(
        "/models/shapes/versions/1/monitor/profile",
        json={"dataset": dataset["id"], "split": "nope"},
    )
    assert bad_split.status_code == 422 and "nope" in bad_split.json()["error"]["message"]
    feedback = client.post(
        "/models/shapes/versions/1/feedback", json={"items": [{"sha256": "0" * 64, "label": "x"}]}
    )
    assert feedback.status_code == 409


def test_windows_fill_from_predict_and_feedback_measures_them(
    client: TestClient,
    ctx: AppContext,
    broker: FakeBroker,
    app_settings: Settings,
    version: int,
    dataset: dict[str, Any],
    shapes_root: Path,
) -> None:
    evaluation = profiled(client, broker, app_settings, dataset)
    assert evaluation["results"]["profile"]["n"] == len(val_images(shapes_root))
    report = client.get("/models/shapes/versions/1/report")
    if report.status_code == 200:  # a card with a WiSE-FT curve has a report
        assert report.json()["monitoring"]["split"] == "val"
    images = val_images(shapes_root)
    # Opted out: not counted.
    predict(client, [png_bytes((9, 9, 9))], monitor=False)
    first = predict(client, [data for data, _ in images[:4]])
    assert all(len(p["sha256"]) == 64 for p in first)
    view = eventually(
        lambda: (v := monitor(client))["current"]["n"] == 4 and v, "the first images recorded"
    )
    assert view["current"]["status"] == "not_enough_traffic"
    assert view["current"]["message"].startswith("not enough traffic yet: 4 of the 8")
    assert view["windows"] == [] and view["profile"]["split"] == "val"
    second = predict(client, [data for data, _ in images[4:WINDOW]])
    view = eventually(lambda: (v := monitor(client))["windows"] and v, "a closed window")
    [window] = view["windows"]
    assert window["n"] == WINDOW and window["measured"] is None
    result = window["result"]
    assert result["status"] == "ok" and 0 < result["drift"]["p_value"] <= 1
    low, high = result["accuracy"]["interval"]
    assert 0 <= low <= result["accuracy"]["estimate"] <= high <= 1
    assert set(result["drift"]["tests"]) == {"mmd", "ks_confidence", "disagreement"}

    served = first + second
    items = [
        {"sha256": p["sha256"], "label": label}
        for p, (_, label) in zip(served, images[:WINDOW], strict=True)
    ]
    answer = client.post("/models/shapes/versions/1/feedback", json={"items": items})
    assert answer.status_code == 200, answer.text
    [measured] = answer.json()["windows"]
    expected = sum(
        p["labels"][0]["label"] == i["label"] for p, i in zip(served, items, strict=True)
    )
    assert measured["measured"]["labelled"] == WINDOW
    assert measured["measured"]["top1"] == pytest.approx(expected / WINDOW)
    assert monitor(client)["windows"][0]["measured"]["top1"] == pytest.approx(expected / WINDOW)

    unknown = client.post(
        "/models/shapes/versions/1/feedback",
        json={"items": [{"sha256": "a" * 64, "label": "circle"}]},
    )
    assert unknown.status_code == 422 and "a" * 64 in unknown.json()["error"]["message"]
    wrong = client.post(
        "/models/shapes/versions/1/feedback",
        json={"items": [{"sha256": served[0]["sha256"], "label": "hexagon"}]},
    )
    assert wrong.status_code == 422 and wrong.json()["error"]["param"] == "items[0].label"
    assert "'hexagon' is not a class" in wrong.json()["error"]["message"]

    def gauges() -> str | None:
        text = client.get("/metrics").text
        return text if "rcs_monitor_drift_score{" in text else None

    metrics = eventually(gauges, "the gauges")
    assert 'rcs_monitor_estimated_accuracy{model="shapes",version="1"}' in metrics
    assert 'rcs_monitor_skipped_images_total{reason="opted_out"} 1.0' in metrics


def test_closed_windows_survive_a_restart(
    client: TestClient,
    broker: FakeBroker,
    app_settings: Settings,
    version: int,
    dataset: dict[str, Any],
    shapes_root: Path,
) -> None:
    profiled(client, broker, app_settings, dataset)
    predict(client, [data for data, _ in val_images(shapes_root)[:WINDOW]])
    before = eventually(lambda: monitor(client)["windows"], "a closed window")
    with open_app(app_settings, headers=AUTH) as again:
        assert monitor(again)["windows"] == before


def test_drift_is_flagged_with_an_event_and_a_failing_monitor_never_fails_predict(
    client: TestClient,
    ctx: AppContext,
    broker: FakeBroker,
    app_settings: Settings,
    version: int,
    dataset: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    profiled(client, broker, app_settings, dataset)
    # Flat grey and black frames: nothing like the shapes the profile saw.
    shifted = [png_bytes((i, i, i)) for i in range(0, 16 * WINDOW, 8)]
    predict(client, shifted[:WINDOW])
    view = eventually(lambda: (v := monitor(client))["windows"] and v, "a closed window")
    assert view["windows"][0]["result"]["drift"]["drifted"], view["windows"][0]["result"]
    assert any(e["message"].startswith("Drift detected on shapes/1") for e in view["events"])

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("the monitor's database write failed")

    monkeypatch.setattr(store, "add_images", broken)
    errors = ctx.monitor.metrics.errors.labels("write")
    before = errors._value.get()
    assert len(predict(client, shifted[WINDOW:])) == WINDOW
    eventually(lambda: errors._value.get() > before, "the error to be counted")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_api_processes_fill_one_window_sequence_without_losing_or_doubling_an_image(
    database: str, tmp_path: Path, shapes_root: Path, artifact_folder: Path
) -> None:
    """Two apps on one database (as two API processes): their traffic goes into one series of
    windows, each image in exactly one."""
    drop: Callable[[], None] = lambda: None  # noqa: E731
    overrides: dict[str, Any] = {
        "monitor_window": WINDOW,
        "monitor_min_window": WINDOW,
        "monitor_flush_s": 0.05,
    }
    if database == "postgresql":
        from tests.live import postgres_database_or_skip

        overrides["database_url"], drop = postgres_database_or_skip()
    settings = make_settings(tmp_path, shapes_root, **overrides)
    try:
        worker = worker_context(settings)
        with worker.sessions() as session:
            register_artifact(session, worker.store, "shapes", artifact_folder, JOB)
        with open_app(settings, headers=AUTH) as one, open_app(settings, headers=AUTH) as two:
            one.app.state.ctx.broker = two.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
            dataset = one.post("/datasets", json={"name": "shapes", "path": str(shapes_root)})
            broker: FakeBroker = one.app.state.ctx.broker  # type: ignore[attr-defined]
            profiled(one, broker, settings, dataset.json())
            images = [
                png_bytes((i * 7 % 256, i * 13 % 256, i * 29 % 256)) for i in range(3 * WINDOW)
            ]
            for start in range(0, len(images), 4):
                client = one if start % 8 == 0 else two
                predict(client, images[start : start + 4])
            windows = eventually(
                lambda: len(w := monitor(two)["windows"]) == 3 and w, "three windows"
            )
        assert [w["n"] for w in windows] == [WINDOW] * 3
        with worker.sessions() as session:
            rows = session.execute(select(MonitorImage.window_id)).scalars().all()
        assert len(rows) == 3 * WINDOW
        assert sorted(collections.Counter(rows).values()) == [WINDOW] * 3
        assert set(rows) == {w["id"] for w in windows}
    finally:
        drop()


def test_open_inference_protocol_images_count_and_tensors_are_skipped(
    client: TestClient,
    broker: FakeBroker,
    app_settings: Settings,
    version: int,
    dataset: dict[str, Any],
    shapes_root: Path,
) -> None:
    profiled(client, broker, app_settings, dataset)
    images = [b64(data) for data, _ in val_images(shapes_root)[:3]]

    def infer(inputs: dict[str, Any], **parameters: Any) -> None:
        body = {"inputs": [inputs], "parameters": parameters}
        answer = client.post("/v2/models/shapes/versions/1/infer", json=body)
        assert answer.status_code == 200, answer.text

    encoded = {"name": "images", "datatype": "BYTES", "shape": [3], "data": images}
    infer(encoded, monitor=False)
    infer(encoded)
    infer(
        {"name": "pixel_values", "datatype": "FP32", "shape": [2, 3, 32, 32], "data": [0.0] * 6144}
    )
    eventually(lambda: monitor(client)["current"]["n"] == 3, "the encoded images recorded")
    metrics = client.get("/metrics").text
    assert 'rcs_monitor_skipped_images_total{reason="opted_out"} 3.0' in metrics
    assert 'rcs_monitor_skipped_images_total{reason="preprocessed"} 2.0' in metrics
