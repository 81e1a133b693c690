"""POST /descriptions/{id}/diagnose with a fake broker: what is validated, stored and sent."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from models.data.synthetic import DESCRIPTIONS
from service.auth.service import create_key
from service.context import AppContext
from service.db.tables import Evaluation
from service.queue import TASK_EVALUATE
from tests.service.support import FakeBroker


def store(client: TestClient, name: str, descriptions: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/descriptions", json={"name": name, "descriptions": descriptions})
    assert response.status_code == 200, response.text
    made: dict[str, Any] = response.json()
    return made


def diagnose(client: TestClient, ref: str, body: dict[str, Any], **headers: str) -> Any:
    return client.post(f"/descriptions/{ref}/diagnose", json=body, headers=headers)


def test_a_diagnosis_is_stored_as_an_evaluation_and_queued(
    client: TestClient, ctx: AppContext, broker: FakeBroker, dataset: dict[str, Any]
) -> None:
    made_set = store(client, "shapes", dict(DESCRIPTIONS))
    body = {"dataset": dataset["id"], "model": "test-tiny-vit", "head": {"templates": "single"}}
    response = diagnose(client, "shapes/1", body)
    assert response.status_code == 200, response.text
    made = response.json()
    assert made["object"] == "evaluation" and made["kind"] == "descriptions"
    assert made["status"] == "queued" and made["splits"] == ["train"]
    assert made["model"] == made["model_reference"] == "test-tiny-vit"
    assert made["description_set"] == made_set["id"] and made["served_head"] == "concept"
    assert made["progress"] == {"splits_done": 0, "splits_total": 1}
    assert broker.sent == [(TASK_EVALUATE, {"payload": {"evaluation_id": made["id"]}})]
    assert client.get(f"/evaluations/{made['id']}").json() == made
    events = client.get(f"/evaluations/{made['id']}/events").json()["data"]
    assert f"descriptions {made_set['id']} on test-tiny-vit" in events[0]["message"]
    # By id too, and on another split.
    other = diagnose(client, made_set["id"], {**body, "split": "val"}).json()
    assert other["splits"] == ["val"]
    # Beside another set, on the same images: a diagnosis of its own, with that set stored.
    second = store(client, "second", dict(DESCRIPTIONS))
    compared = diagnose(client, "shapes", {**body, "compare_to": "second"})
    assert compared.status_code == 200, compared.text
    assert compared.json()["id"] not in (made["id"], other["id"])
    with ctx.sessions() as session:
        row = session.get(Evaluation, compared.json()["id"])
        assert row is not None and row.config["compare"]["description_set"] == second["id"]


def test_every_bad_input_is_a_4xx_naming_it_and_nothing_is_queued(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any]
) -> None:
    store(client, "shapes", dict(DESCRIPTIONS))
    renamed = {("plus" if k == "cross" else k): v for k, v in DESCRIPTIONS.items()}
    store(client, "renamed", renamed)
    ds = dataset["id"]
    ok = {"dataset": ds, "model": "test-tiny-vit"}
    cases: list[tuple[str, dict[str, Any], int, str | None, list[str]]] = [
        ("nothing", ok, 404, None, ["no description set 'nothing'"]),
        ("shapes/9", ok, 404, None, ["'shapes/9'"]),
        ("shapes", {**ok, "dataset": "ds-missing"}, 422, "dataset", ["no dataset 'ds-missing'"]),
        (
            "renamed",
            ok,
            422,
            "dataset",
            ["no description for class(es) 'cross'", "unknown class(es) 'plus'", ds],
        ),
        ("shapes", {**ok, "split": "winter"}, 422, "split", ["'winter'", "'ood_test'"]),
        ("shapes", {**ok, "model": "no-such-arch"}, 422, "model", ["unknown model"]),
        ("shapes", {**ok, "model": "hf-hub:org/x"}, 422, "model", ["not allowed"]),
        ("shapes", {**ok, "model": "models:/none"}, 422, "model", ["no model 'models:/none'"]),
        ("shapes", {**ok, "pretrained": "nope"}, 422, "pretrained", ["no pretrained tag"]),
        ("shapes", {**ok, "head": {"templates": "nope"}}, 422, "head.templates", []),
        ("shapes", {**ok, "splits": ["val"]}, 422, None, []),
        ("shapes", {**ok, "compare_to": "nothing"}, 422, "compare_to", ["'nothing'"]),
        ("shapes", {**ok, "compare_to": "renamed"}, 422, "compare_to", ["'cross'", ds]),
    ]
    for ref, body, status, param, words in cases:
        response = diagnose(client, ref, body)
        assert response.status_code == status, (ref, body, response.text)
        error = response.json()["error"]
        if param is not None:
            assert error["param"] in (param, f"body.{param}"), (ref, body, error)
        for word in words:
            assert word in error["message"], (ref, body, error)
    assert broker.sent == []
    assert client.get("/evaluations").json()["data"] == []


def test_idempotency_key_returns_the_same_diagnosis(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any]
) -> None:
    store(client, "shapes", dict(DESCRIPTIONS))
    body = {"dataset": dataset["id"], "model": "test-tiny-vit"}
    first = diagnose(client, "shapes", body, **{"Idempotency-Key": "k1"})
    again = diagnose(client, "shapes", body, **{"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    for changed in ({**body, "split": "val"},):
        other = diagnose(client, "shapes", changed, **{"Idempotency-Key": "k1"})
        assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    # Another set with the same body is another request; so is an evaluation under that key.
    store(client, "copy", dict(DESCRIPTIONS))
    assert diagnose(client, "copy", body, **{"Idempotency-Key": "k1"}).status_code == 409
    evaluation = {"model": "shapes", "dataset": dataset["id"]}
    clash = client.post("/evaluations", json=evaluation, headers={"Idempotency-Key": "k1"})
    assert clash.status_code == 409
    assert len(broker.sent) == 1


def test_a_predict_key_cannot_diagnose(
    client: TestClient, ctx: AppContext, broker: FakeBroker, dataset: dict[str, Any]
) -> None:
    store(client, "shapes", dict(DESCRIPTIONS))
    with ctx.sessions() as session:
        _, key = create_key(session, "p", ["predict"])
    headers = {"Authorization": f"Bearer {key}"}
    body = {"dataset": dataset["id"], "model": "test-tiny-vit"}
    assert diagnose(client, "shapes", body, **headers).status_code == 403
    assert broker.sent == []
