"""The evaluations API with a fake broker: what is validated, stored, sent, listed, cancelled."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.auth.service import create_key
from service.context import AppContext
from service.queue import TASK_EVALUATE
from tests.service.support import FakeBroker, register_artifact

JOB = "ftjob-" + "0" * 24


@pytest.fixture(scope="module")
def renamed_root(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes dataset with its class 'cross' called 'plus' in every split."""
    root = tmp_path_factory.mktemp("renamed") / "shapes-plus"
    shutil.copytree(shapes_root, root)
    for split in ("train", "val", "test", "ood_test"):
        (root / split / "cross").rename(root / split / "plus")
    return root


@pytest.fixture
def settings_overrides(shapes_root: Path, renamed_root: Path) -> dict[str, Any]:
    return {"allowed_dataset_roots": [shapes_root, renamed_root]}


@pytest.fixture
def version(ctx: AppContext, artifact_folder: Path) -> int:
    with ctx.sessions() as session:
        return register_artifact(session, ctx.store, "shapes", artifact_folder, JOB)


def evaluate(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/evaluations", json=body, headers=headers)


def error_of(response: Any) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    return error


def test_an_evaluation_is_stored_queued_and_listed_by_version(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any], version: int
) -> None:
    client.put("/models/shapes/aliases/champion", json={"version": version})
    body = {"model": "shapes@champion", "dataset": dataset["id"], "splits": ["ood_test", "test"]}
    response = evaluate(client, body)
    assert response.status_code == 200, response.text
    made = response.json()
    assert made["id"].startswith("eval-") and made["object"] == "evaluation"
    assert made["status"] == "queued" and made["kind"] == "model"
    # An alias moves; the evaluation is of the version it named when it was created.
    assert made["model"] == "shapes/1" and made["model_reference"] == "shapes@champion"
    assert made["splits"] == ["ood_test", "test"] and made["results"] is None
    assert made["progress"] == {"splits_done": 0, "splits_total": 2}
    assert broker.sent == [(TASK_EVALUATE, {"payload": {"evaluation_id": made["id"]}})]

    assert client.get(f"/evaluations/{made['id']}").json() == made
    events = client.get(f"/evaluations/{made['id']}/events").json()["data"]
    assert [e["message"] for e in events][-1] == "Evaluation queued"
    assert all(e["id"].startswith("evalevent-") for e in events)
    for query in ("shapes/1", "shapes", "shapes@champion", "models:/shapes/1"):
        listed = client.get("/evaluations", params={"model": query}).json()["data"]
        assert [e["id"] for e in listed] == [made["id"]], query
    assert client.get("/evaluations", params={"model": "shapes/2"}).json()["data"] == []
    assert client.get("/evaluations", params={"dataset": "ds-other"}).json()["data"] == []
    by_version = client.get("/models/shapes/versions/1/evaluations").json()
    assert [e["id"] for e in by_version["data"]] == [made["id"]]
    assert client.get("/models/shapes/versions/9/evaluations").status_code == 404


def test_default_splits_are_every_split_but_train(
    client: TestClient, dataset: dict[str, Any], version: int
) -> None:
    made = evaluate(client, {"model": "shapes", "dataset": dataset["id"]}).json()
    assert sorted(made["splits"]) == ["ood_test", "test", "val"]


def test_every_bad_input_is_a_4xx_naming_it_and_nothing_is_queued(
    client: TestClient,
    broker: FakeBroker,
    dataset: dict[str, Any],
    version: int,
    renamed_root: Path,
) -> None:
    ds = dataset["id"]
    renamed = client.post("/datasets", json={"name": "plus", "path": str(renamed_root)}).json()
    doomed = client.post("/datasets", json={"name": "doomed", "path": str(renamed_root)}).json()
    assert client.delete(f"/datasets/{doomed['id']}").status_code == 204
    cases: list[tuple[dict[str, Any], str, list[str]]] = [
        ({"model": "nothing", "dataset": ds}, "model", ["'nothing'"]),
        ({"model": "shapes/7", "dataset": ds}, "model", ["'shapes/7'"]),
        ({"model": "shapes@prod", "dataset": ds}, "model", ["no alias 'prod'"]),
        ({"model": "not a ref", "dataset": ds}, "model", ["not a model reference"]),
        ({"model": "shapes", "dataset": "ds-missing"}, "dataset", ["no dataset 'ds-missing'"]),
        ({"model": "shapes", "dataset": doomed["id"]}, "dataset", ["was deleted"]),
        (
            {"model": "shapes", "dataset": ds, "splits": ["val", "winter"]},
            "splits",
            ["'winter'", "'ood_test'"],
        ),
        ({"model": "shapes", "dataset": ds, "splits": ["val", "val"]}, "splits", ["more than"]),
        ({"model": "shapes", "dataset": ds, "splits": []}, "splits", []),
        (
            {"model": "shapes", "dataset": renamed["id"]},
            "dataset",
            ["missing the model's class(es) 'cross'", "does not know: 'plus'"],
        ),
    ]
    for body, param, words in cases:
        response = evaluate(client, body)
        assert response.status_code == 422, (body, response.text)
        error = error_of(response)
        assert error["param"] in (param, f"body.{param}"), (body, error)
        for word in words:
            assert word in error["message"], (body, error)
    extra = evaluate(client, {"model": "shapes", "dataset": ds, "head": "dual"})
    assert extra.status_code == 422
    assert broker.sent == []
    assert client.get("/evaluations").json()["data"] == []


def test_idempotency_key_returns_the_same_evaluation(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any], version: int
) -> None:
    body = {"model": "shapes/1", "dataset": dataset["id"]}
    first = evaluate(client, body, **{"Idempotency-Key": "k1"})
    again = evaluate(client, body, **{"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = evaluate(client, {**body, "splits": ["val"]}, **{"Idempotency-Key": "k1"})
    assert other.status_code == 409 and error_of(other)["param"] == "Idempotency-Key"
    assert len(broker.sent) == 1


def test_cancel_and_the_event_stream_ends_with_the_status(
    client: TestClient, dataset: dict[str, Any], version: int
) -> None:
    made = evaluate(client, {"model": "shapes", "dataset": dataset["id"]}).json()
    cancelled = client.post(f"/evaluations/{made['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = client.post(f"/evaluations/{made['id']}/cancel")
    assert again.status_code == 409 and "terminal" in error_of(again)["message"]
    assert client.post("/evaluations/eval-nothing/cancel").status_code == 404
    assert client.get("/evaluations/eval-nothing").status_code == 404

    stream = client.get(f"/evaluations/{made['id']}/events", params={"stream": "true"})
    assert stream.status_code == 200
    assert "Evaluation cancelled" in stream.text
    assert stream.text.rstrip().endswith('data: {"status": "cancelled"}')
    # Resuming after the second event sends the later ones only.
    resumed = client.get(
        f"/evaluations/{made['id']}/events",
        params={"stream": "true"},
        headers={"Last-Event-ID": stream.text.split("id: ")[2].split("\n")[0]},
    )
    assert "Evaluation queued" not in resumed.text and "Evaluation cancelled" in resumed.text
    bad = client.get(f"/evaluations/{made['id']}/events", params={"after": "ftevent-x"})
    assert bad.status_code == 422


def test_a_broker_failure_is_503_and_the_evaluation_is_kept_failed(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any], version: int
) -> None:
    broker.fail = True
    response = evaluate(client, {"model": "shapes", "dataset": dataset["id"]})
    assert response.status_code == 503
    [row] = client.get("/evaluations").json()["data"]
    assert row["status"] == "failed" and row["error"]["code"] == "queue_unavailable"


def test_a_predict_key_reads_but_cannot_create_or_cancel(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any], version: int
) -> None:
    with ctx.sessions() as session:
        _, key = create_key(session, "p", ["predict"])
    predict = {"Authorization": f"Bearer {key}"}
    body = {"model": "shapes", "dataset": dataset["id"]}
    assert client.post("/evaluations", json=body, headers=predict).status_code == 403
    made = evaluate(client, body).json()
    assert client.get(f"/evaluations/{made['id']}", headers=predict).status_code == 200
    cancel = client.post(f"/evaluations/{made['id']}/cancel", headers=predict)
    assert cancel.status_code == 403


def test_a_dataset_an_evaluation_waits_on_cannot_be_deleted(
    client: TestClient, dataset: dict[str, Any], version: int
) -> None:
    made = evaluate(client, {"model": "shapes", "dataset": dataset["id"]}).json()
    refused = client.delete(f"/datasets/{dataset['id']}")
    assert refused.status_code == 409
    assert f"used by evaluation '{made['id']}' (queued)" in error_of(refused)["message"]
    assert client.post(f"/evaluations/{made['id']}/cancel").status_code == 200
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204


def test_a_version_links_its_report_and_evaluations(client: TestClient, version: int) -> None:
    got = client.get(f"/models/shapes/versions/{version}").json()
    assert got["report"] == f"/models/shapes/versions/{version}/report"
    assert got["evaluations"] == f"/evaluations?model=shapes/{version}"
    assert client.get(got["report"]).status_code == 200
    assert client.get(got["evaluations"]).status_code == 200
