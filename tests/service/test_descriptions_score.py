"""POST /descriptions/score and /descriptions/accept with a fake broker: what is validated,
stored and sent; candidate pools are never trained on."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.data.synthetic import DESCRIPTIONS
from service.context import AppContext
from service.db.tables import Evaluation
from service.queue import TASK_EVALUATE
from service.status import EvaluationStatus
from tests.service.support import FakeBroker

POOL = {c: list(t) for c, t in DESCRIPTIONS.items()}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_score_candidates": 24}


def score(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/descriptions/score", json=body)


def test_a_scoring_is_an_evaluation_of_kind_candidates(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any]
) -> None:
    body = {"dataset": dataset["id"], "model": "test-tiny-vit", "candidates": POOL}
    made = score(client, {**body, "templates": True, "rule": {"max_per_class": 2}}).json()
    assert made["kind"] == "candidates" and made["status"] == "queued"
    assert made["splits"] == ["train"] and made["served_head"] == "concept"
    assert broker.sent == [(TASK_EVALUATE, {"payload": {"evaluation_id": made["id"]}})]
    events = client.get(f"/evaluations/{made['id']}/events").json()["data"]
    assert "Validated 21 candidate descriptions on test-tiny-vit" in events[0]["message"]
    # A stored pool (status candidates) is scored by reference, and refused for training.
    pool = client.post(
        "/descriptions", json={"name": "pool", "descriptions": POOL, "status": "candidates"}
    ).json()
    assert pool["status"] == "candidates"
    by_ref = score(client, {**body, "candidates": None, "pool": "pool"}).json()
    assert by_ref["description_set"] == pool["id"]
    job = {
        "model": "test-tiny-vit",
        "dataset": dataset["id"],
        "descriptions": "pool",
        "registered_model_name": "m",
    }
    refused = client.post("/finetune", json=job)
    assert refused.status_code == 422 and "pool of candidates" in refused.json()["error"]["message"]
    assert client.post(f"/descriptions/{pool['id']}/diagnose", json=body).status_code == 422


def test_bad_pools_are_4xx_naming_what_is_wrong_and_nothing_is_queued(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any]
) -> None:
    ok = {"dataset": dataset["id"], "model": "test-tiny-vit"}
    many = {c: [f"{c} number {i}" for i in range(7)] for c in POOL}
    cases: list[tuple[dict[str, Any], int, list[str]]] = [
        ({**ok, "candidates": {**POOL, "horse": ["a horse"]}}, 422, ["unknown class", "horse"]),
        ({**ok, "candidates": {}}, 422, ["at least one class"]),
        ({**ok, "candidates": {**POOL, "cross": []}}, 422, ["non-empty text"]),
        ({**ok, "candidates": {"circle": ["a disc"]}}, 422, ["no candidates for class", "cross"]),
        ({**ok, "candidates": {**POOL, "cross": [3]}}, 422, []),
        ({**ok, "candidates": {**POOL, "cross": [{"text": "x"}]}}, 422, []),
        (
            {**ok, "candidates": many},
            422,
            ["28 candidates, at most 24", "RCS_MAX_SCORE_CANDIDATES"],
        ),
        ({**ok, "candidates": {**POOL, "cross": ["x" * 1001]}}, 422, ["over 1000 characters"]),
        (ok, 422, ["nothing to score"]),
        ({**ok, "pool": "nothing"}, 422, ["no description set 'nothing'"]),
        ({**ok, "candidates": POOL, "reference": "nothing"}, 422, ["'nothing'"]),
        ({**ok, "candidates": POOL, "model": "no-such-arch"}, 422, ["unknown model"]),
        ({**ok, "candidates": POOL, "dataset": "ds-x"}, 422, ["no dataset 'ds-x'"]),
        ({**ok, "candidates": POOL, "rule": {"top1_tolerance": 2}}, 422, []),
    ]
    for body, status, words in cases:
        response = score(client, body)
        assert response.status_code == status, (body, response.text)
        message = response.json()["error"]["message"]
        for word in words:
            assert word in message, (body, message)
    assert broker.sent == [] and client.get("/evaluations").json()["data"] == []


def test_accept_refuses_what_is_not_a_finished_scoring_and_stores_nothing(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any], broker: FakeBroker
) -> None:
    body = {"dataset": dataset["id"], "model": "test-tiny-vit", "candidates": POOL}
    made = score(client, body).json()
    accept = {"evaluation": made["id"], "name": "shapes"}
    queued = client.post("/descriptions/accept", json=accept)
    assert queued.status_code == 409 and "queued" in queued.json()["error"]["message"]
    missing = client.post("/descriptions/accept", json={**accept, "evaluation": "eval-x"})
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "evaluation"
    # Finished (as a worker would record it): the proposal becomes version 1, with provenance.
    proposed = {"circle": [POOL["circle"][0]], **{c: POOL[c] for c in POOL if c != "circle"}}
    candidates = {"circle": [{"text": t} for t in POOL["circle"]]}
    with ctx.sessions() as session:
        row = session.get(Evaluation, made["id"])
        assert row is not None
        row.status = EvaluationStatus.SUCCEEDED
        row.results = {
            "scores": {
                "proposed": proposed,
                "proposed_concept_top1": 0.5,
                "per_class": {c: {"candidates": candidates.get(c, [])} for c in POOL},
            }
        }
        session.commit()
    unknown = client.post("/descriptions/accept", json={**accept, "descriptions": {"horse": ["a"]}})
    assert unknown.status_code == 422 and "unknown class 'horse'" in unknown.text
    assert client.get("/descriptions").json()["data"] == []
    chosen = {"circle": [POOL["circle"][1]]}
    created = client.post("/descriptions/accept", json={**accept, "descriptions": chosen}).json()
    assert created["version"] == 1 and created["status"] == "accepted"
    assert created["descriptions"] == {**proposed, **chosen}
    assert created["provenance"]["evaluation"] == made["id"]
    assert created["provenance"]["edited"] == ["circle"]


def test_a_job_carries_allow_weak_descriptions_to_its_run_config(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any], broker: FakeBroker
) -> None:
    from service.db.tables import Job

    job = {
        "model": "test-tiny-vit",
        "dataset": dataset["id"],
        "descriptions": POOL,
        "registered_model_name": "m",
    }
    for allow in (False, True):
        made = client.post("/finetune", json={**job, "allow_weak_descriptions": allow})
        assert made.status_code == 200, made.text
        with ctx.sessions() as session:
            row = session.get(Job, made.json()["id"])
            assert row is not None
            assert row.run_config["data"]["allow_weak_descriptions"] is allow
    refused = client.post("/finetune", json={**job, "allow_weak_descriptions": "maybe"})
    assert refused.status_code == 422
