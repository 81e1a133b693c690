"""POST /finetune validation, idempotency, listing, cancelling, events and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from service.jobs import state
from service.jobs.schemas import MAX_SEED
from service.queue import TASK_FINETUNE, FinetunePayload
from tests.service.support import FakeBroker, finetune_body, register_artifact


def test_create_job_commits_then_sends_the_task_by_name(
    client: TestClient, dataset: dict[str, Any], broker: FakeBroker
) -> None:
    response = client.post("/finetune", json=finetune_body(dataset["id"]))
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["object"] == "fine_tuning.job"
    assert job["id"].startswith("ftjob-")
    assert job["status"] == "queued"
    assert job["method"]["type"] == "drm"
    assert job["hyperparameters"]["batch_size"] == 8
    assert job["descriptions"] == "inline"
    assert job["progress"] == {"step": 0, "total_steps": 4, "eta_seconds": None}
    assert broker.sent == [(TASK_FINETUNE, {"payload": {"job_id": job["id"]}})]
    FinetunePayload.model_validate(broker.sent[0][1]["payload"])
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]


def test_auto_hyperparameters_resolve_to_numbers(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    body = finetune_body(dataset["id"], hyperparameters={})
    job = client.post("/finetune", json=body).json()
    assert all(isinstance(v, int | float) for v in job["hyperparameters"].values())
    assert job["hyperparameters"]["learning_rate"] == 5e-4  # random-init test backbone


def test_stored_description_set_by_id_and_by_name(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    texts = {c: [f"a {c}"] for c in dataset["classes"]}
    first = client.post("/descriptions", json={"name": "shapes", "descriptions": texts}).json()
    second = client.post("/descriptions", json={"name": "shapes", "descriptions": texts}).json()
    assert (first["version"], second["version"]) == (1, 2)
    for ref, expected in (
        (first["id"], first["id"]),
        ("shapes", second["id"]),
        ("shapes/1", first["id"]),
    ):
        job = client.post("/finetune", json=finetune_body(dataset["id"], descriptions=ref))
        assert job.status_code == 200, job.text
        assert job.json()["descriptions"] == expected


@pytest.mark.parametrize(
    ("change", "param", "needle"),
    [
        ({"dataset": "ds-missing"}, "dataset", "no dataset"),
        ({"model": "no-such-arch"}, "model", "unknown model"),
        ({"model": "models:/nothing/1"}, "model", "no model"),
        ({"pretrained": "no-such-tag"}, "pretrained", "no pretrained tag"),
        ({"descriptions": {"circle": "round"}}, "descriptions", "no description for class"),
        ({"descriptions": None}, "descriptions", "needs class descriptions"),
        ({"descriptions": "desc-000"}, "descriptions", "no description set"),
        ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate", "greater"),
        ({"hyperparameters": {"n_epochs": "lots"}}, "hyperparameters.n_epochs", ""),
        ({"hyperparameters": {"bogus": 1}}, "hyperparameters.bogus", "Extra inputs"),
        ({"wise_ft": {"alphas": [1.5]}}, "wise_ft.alphas", "must lie in [0, 1]"),
        ({"wise_ft": {"selection": "vibes"}}, "wise_ft.selection", "must be one of"),
        ({"method": {"type": "sgd"}}, "method.type", ""),
        ({"method": {"type": "drm", "objective": {"lam": -1}}}, "method.objective.lam", ">= 0"),
        ({"head": {"beta": 2}}, "head.beta", "must lie in [0, 1]"),
        ({"registered_model_name": "a/b"}, "registered_model_name", "pattern"),
        ({"metadata": {str(i): "x" for i in range(17)}}, "metadata", "at most 16"),
        ({"splits": {"train": "nope"}}, "splits.train", "no split"),
        ({"splits": {"ood": ["nope"]}}, "splits.ood", "no split"),
        ({"seed": -1}, "seed", "greater"),
        # Regressions: each of these was accepted, then failed (or overflowed) later.
        ({"seed": MAX_SEED + 1}, "seed", "less than or equal"),
        ({"head": {"templates": "nope"}}, "head.templates", "unknown template set"),
        ({"hyperparameters": {"batch_size": 4096}}, "hyperparameters.batch_size", "exceeds"),
        ({"hyperparameters": {"max_steps": 10**11}}, "hyperparameters.max_steps", "less than"),
        ({"hyperparameters": {"warmup_steps": 10**11}}, "hyperparameters.warmup_steps", "less"),
        ({"descriptions": "shapes/99999999999999999999"}, "descriptions", "bad description set"),
        # Issue 11: absurd values that used to be accepted.
        (
            {"method": {"type": "drm", "objective": {"lam": 1e308}}},
            "method.objective.lam",
            "at most",
        ),
        (
            {"wise_ft": {"alphas": [i / 10_000 for i in range(10_001)]}},
            "wise_ft.alphas",
            "at most 101",
        ),
        (
            {"hyperparameters": {"n_epochs": 1, "batch_size": 8, "warmup_steps": 50}},
            "hyperparameters.warmup_steps",
            "shorter than the run (4 steps)",
        ),
        ({"splits": {"validation": "train"}}, "splits.validation", "must differ"),
        ({"splits": {"ood": ["train"]}}, "splits.ood", "training split"),
        ({"model": "hf-hub:timm/ViT-B-16-SigLIP"}, "model", "not allowed on this server"),
    ],
)
def test_invalid_requests_are_422_naming_the_field_and_queue_nothing(
    client: TestClient,
    dataset: dict[str, Any],
    broker: FakeBroker,
    change: dict[str, Any],
    param: str,
    needle: str,
) -> None:
    response = client.post("/finetune", json=finetune_body(dataset["id"], **change))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert needle in error["message"]
    assert broker.sent == []
    assert client.get("/jobs").json()["data"] == []


def test_missing_field_is_named(client: TestClient, dataset: dict[str, Any]) -> None:
    body = finetune_body(dataset["id"])
    del body["registered_model_name"]
    error = client.post("/finetune", json=body).json()["error"]
    assert error["param"] == "registered_model_name"
    assert error["message"] == "registered_model_name: field required"


def test_idempotency_key_returns_the_same_job(
    client: TestClient, dataset: dict[str, Any], broker: FakeBroker
) -> None:
    body = finetune_body(dataset["id"])
    headers = {"Idempotency-Key": "retry-1"}
    first = client.post("/finetune", json=body, headers=headers)
    second = client.post("/finetune", json=body, headers=headers)
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(broker.sent) == 1
    other = client.post("/finetune", json={**body, "seed": 1}, headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["param"] == "Idempotency-Key"


def test_broker_down_fails_the_job_with_503(
    client: TestClient, dataset: dict[str, Any], broker: FakeBroker
) -> None:
    broker.fail = True
    response = client.post("/finetune", json=finetune_body(dataset["id"]))
    assert response.status_code == 503
    job = client.get("/jobs").json()["data"][0]
    assert job["status"] == "failed"
    assert job["error"]["code"] == "queue_unavailable"


def test_list_jobs_paginates_newest_first(client: TestClient, dataset: dict[str, Any]) -> None:
    ids = [
        client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"] for _ in range(3)
    ]
    page = client.get("/jobs", params={"limit": 2}).json()
    assert page["object"] == "list" and page["has_more"] is True
    rest = client.get("/jobs", params={"limit": 2, "after": page["data"][-1]["id"]}).json()
    seen = [j["id"] for j in page["data"] + rest["data"]]
    assert sorted(seen) == sorted(ids) and rest["has_more"] is False
    assert client.get("/jobs", params={"status": "succeeded"}).json()["data"] == []


def test_cancel_queued_job_is_terminal(client: TestClient, dataset: dict[str, Any]) -> None:
    job = client.post("/finetune", json=finetune_body(dataset["id"])).json()
    cancelled = client.post(f"/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"] is not None
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert "terminal states never change" in again.json()["error"]["message"]


def test_unknown_job_is_404(client: TestClient) -> None:
    for path in ("/jobs/ftjob-x", "/jobs/ftjob-x/events", "/jobs/ftjob-x/checkpoints"):
        response = client.get(path)
        assert response.status_code == 404
        assert "no fine-tuning job" in response.json()["error"]["message"]
    assert client.post("/jobs/ftjob-x/cancel").status_code == 404


def test_events_page_oldest_first_and_stream_ends_with_the_job(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any]
) -> None:
    job_id = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]
    with ctx.sessions() as session:
        for i in range(3):
            state.add_event(session, job_id, f"m{i}", type="metrics", data={"step": i})
        session.commit()
    first = client.get(f"/jobs/{job_id}/events", params={"limit": 2}).json()
    assert [e["message"] for e in first["data"]][:1] == [
        "Validated dataset " + dataset["id"] + " and descriptions"
    ]
    assert first["has_more"] is True
    after = first["data"][-1]["id"]
    rest = client.get(f"/jobs/{job_id}/events", params={"after": after}).json()
    assert [e["message"] for e in rest["data"]] == ["m0", "m1", "m2"]
    assert client.get(f"/jobs/{job_id}/events", params={"after": "junk"}).status_code == 422

    client.post(f"/jobs/{job_id}/cancel")
    with client.stream("GET", f"/jobs/{job_id}/events", params={"stream": "true"}) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    assert text.count("event: metrics") == 3
    assert 'event: end\ndata: {"status": "cancelled"}' in text


def test_checkpoints_list(client: TestClient, ctx: AppContext, dataset: dict[str, Any]) -> None:
    job_id = client.post("/finetune", json=finetune_body(dataset["id"])).json()["id"]
    with ctx.sessions() as session:
        state.add_checkpoint(session, job_id, 4, {"losses": {"loss": 1.0}})
        state.add_checkpoint(session, job_id, 4, {"losses": {"loss": 9.0}})  # ignored: same step
        session.commit()
    data = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    assert [(c["step_number"], c["metrics"]["losses"]["loss"]) for c in data] == [(4, 1.0)]
    assert data[0]["object"] == "fine_tuning.job.checkpoint"


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ('"lam": Infinity', "must be a finite number, got inf"),
        ('"lam": 1e400', "must be a finite number, got inf"),
        ('"lam": NaN', "got nan"),  # refused by the core's own check
    ],
)
def test_non_finite_numbers_are_422_naming_the_field(
    client: TestClient, dataset: dict[str, Any], broker: FakeBroker, raw: str, needle: str
) -> None:
    body = json.dumps(finetune_body(dataset["id"], method={"type": "drm", "objective": {}}))
    body = body.replace('"objective": {}', '"objective": {' + raw + "}")
    response = client.post("/finetune", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == "method.objective.lam" and needle in error["message"]
    assert broker.sent == []


@pytest.mark.parametrize("settings_overrides", [{"allow_hub_models": True}])
def test_hub_models_need_the_setting_and_a_connected_server(
    client: TestClient, dataset: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = finetune_body(dataset["id"], model="hf-hub:timm/ViT-B-16-SigLIP")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = client.post("/finetune", json=body)
    assert offline.status_code == 422 and offline.json()["error"]["param"] == "model"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    # Allowed: nothing is downloaded when the job is created (the worker fetches the weights).
    assert client.post("/finetune", json=body).status_code == 200


def test_a_version_shows_its_hyperparameters_under_the_jobs_names(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any], artifact_folder: Path
) -> None:
    """Issue 11 (15): the card said epochs and lr where the job says n_epochs and learning_rate.
    Cards store the core's config, so every card, including those written before, reads so."""
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-x")
    card = client.get("/models/shapes/versions/1").json()["hyperparameters"]
    job = client.post("/finetune", json=finetune_body(dataset["id"])).json()["hyperparameters"]
    assert set(job) <= set(card)
    assert not {"epochs", "lr"} & set(card)
    assert card["n_epochs"] == 1 and card["learning_rate"] == 1e-5  # the core's defaults
    assert card["grad_clip"] == 1.0  # core-only settings keep their names
