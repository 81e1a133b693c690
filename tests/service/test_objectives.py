"""Objectives are data: ``GET /objectives`` serves the registry, ``method.type`` is checked
against it, and an objective registered from outside ``models/`` goes through the CLI, the API
and the worker with no other change (docs/objectives.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch.nn.functional as F
from fastapi.testclient import TestClient
from torch import Tensor

from models.cli import main as cli
from models.config import ObjectiveConfig
from models.heads import Classifier
from models.objective_registry import (
    ObjectiveSpec,
    objective_names,
    register_objective,
    unregister_objective,
)
from models.objectives import Batch, CorePrior, Encoder
from service.db.tables import ModelVersion
from tests.service.support import finetune_body, make_settings, new_job, worker_context
from worker.runner import run_job


class SmoothedCrossEntropy:
    """The toy: cross-entropy against the zero-shot head, labels smoothed by ``lam`` / 10."""

    trains = True

    def __init__(self, classifier: Classifier, smoothing: float) -> None:
        self.classifier = classifier
        self.smoothing = smoothing

    def __call__(self, encoder: Encoder, batch: Batch, step: int) -> dict[str, Tensor]:
        image_features, _, scale = encoder(batch.images, None)
        logits = scale * image_features @ self.classifier.default_head.t()
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.smoothing)
        return {"loss": loss, "erm": loss.detach()}


def _build_toy(
    classifier: Classifier, cfg: ObjectiveConfig, seed: int, prior: CorePrior | None
) -> SmoothedCrossEntropy:
    assert prior is None  # the spec does not ask for the frozen model's prior
    return SmoothedCrossEntropy(classifier, min(cfg.lam / 10, 0.5))


TOY = ObjectiveSpec(
    "toy-smoothed",
    "a test's toy: cross-entropy with smoothed labels",
    _build_toy,
    label="Toy (smoothed CE)",
    learned_head=True,
    trains_text=False,
    knobs=("lam",),
)


@pytest.fixture
def toy() -> Iterator[ObjectiveSpec]:
    register_objective(TOY)
    try:
        yield TOY
    finally:
        unregister_objective(TOY.name)
    assert TOY.name not in objective_names()


def test_get_objectives_serves_the_registry(client: TestClient) -> None:
    body = client.get("/objectives").json()
    assert body["default"] == "drm"
    by_name = {o["name"]: o for o in body["data"]}
    assert tuple(by_name) == objective_names()
    drm = by_name["drm"]
    assert drm["needs_descriptions"] and drm["needs_prior"] and drm["trains"]
    knobs = {k["name"]: k for k in drm["knobs"]}
    assert knobs["wrm"]["type"] == "choice" and knobs["wrm"]["choices"] == ["weight", "soft"]
    assert knobs["lam"]["default"] == 1.0 and knobs["lam"]["minimum"] == 0.0
    assert knobs["mask_same_class"]["type"] == "boolean"
    assert by_name["ce"]["learned_head"] and not by_name["ce"]["trains_text"]
    assert not by_name["zeroshot"]["trains"] and by_name["zeroshot"]["knobs"] == []
    assert "/objectives" in client.get("/openapi.json").json()["paths"]
    del client.headers["Authorization"]
    assert client.get("/objectives").status_code == 401


def test_an_unknown_objective_is_a_422_naming_the_known_ones(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    response = client.post("/finetune", json=finetune_body(dataset["id"], method={"type": "sgd"}))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["param"] == "method.type"
    assert "unknown objective 'sgd'" in error["message"]
    assert all(name in error["message"] for name in objective_names())


@pytest.mark.slow
def test_a_registered_toy_objective_goes_through_cli_api_and_worker(
    toy: ObjectiveSpec,
    client: TestClient,
    dataset: dict[str, Any],
    shapes_root: Path,
    tmp_path: Path,
) -> None:
    # CLI: python -m models finetune with the toy's name and knob.
    out = tmp_path / "cli-run"
    settings = [
        f"data.path={shapes_root}",
        "data.check_images=false",
        f"objective.name={toy.name}",
        "objective.lam=1.0",
        "head.templates=single",
        "train.device=cpu",
        "train.max_steps=2",
        "train.batch_size=8",
        "wise.alphas=[0.0, 1.0]",
        f"output_dir={out}",
    ]
    args = ["finetune", "--no-progress", *[a for s in settings for a in ("--set", s)]]
    assert cli(args) == 0
    card = json.loads((out / "artifact.json").read_text())
    assert card["objective"] == toy.name and card["training"]["steps"] == 2

    # API: listed with its knob, and a job with it accepted (no descriptions needed).
    listed = {o["name"]: o for o in client.get("/objectives").json()["data"]}
    assert listed[toy.name]["label"] == "Toy (smoothed CE)"
    assert [k["name"] for k in listed[toy.name]["knobs"]] == ["lam"]
    method = {"type": toy.name, "objective": {"lam": 2.0}}
    body = finetune_body(dataset["id"], method=method, descriptions=None)
    response = client.post("/finetune", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["method"]["objective"]["name"] == toy.name

    # Worker: a job with it trains and registers a version.
    ctx = worker_context(make_settings(tmp_path / "worker", shapes_root), event_every_s=0.0)
    job_id = new_job(
        ctx, shapes_root, method=method, hyperparameters={"max_steps": 2, "batch_size": 8}
    )
    outcome = run_job(ctx, job_id)
    assert outcome.status == "succeeded", outcome
    with ctx.sessions() as session:
        [version] = session.query(ModelVersion).all()
        assert version.status == "READY" and version.job_id == job_id
