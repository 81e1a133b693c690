"""The worker's evaluation runner in-process: metrics checked against an independent
computation, classes matched by name, double delivery, cancellation, preemption, deletions."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score

from models import backbone as backbone_module
from models.artifacts import load_artifact, save_artifact
from models.backbone import OFFLINE_BACKBONE, create_backbone
from models.config import BackboneConfig, HeadConfig
from models.data.synthetic import DESCRIPTIONS
from models.diagnostics import description_diagnostics
from models.heads import Classifier
from models.objectives import core_probabilities
from models.templates import resolve_templates
from service.datasets import service as datasets
from service.db.tables import Dataset, Evaluation, EvaluationEvent
from service.descriptions import service as description_sets
from service.errors import Conflict
from service.evaluations import service as evaluations
from service.evaluations import state
from service.evaluations.schemas import DiagnoseRequest, EvaluationRequest
from service.queue import TASK_EVALUATE
from service.registry import service as registry
from tests.conftest import make_classifier
from tests.service.support import dataset_name, make_settings, register_artifact, worker_context
from worker import evaluations as runner
from worker.app import create_celery, make_context, orphan_deliveries
from worker.runner import WorkerContext

HEADS = ("default", "concept", "dual")


@pytest.fixture
def ctx(tmp_path: Path, shapes_root: Path) -> WorkerContext:
    return worker_context(make_settings(tmp_path, shapes_root))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its classes in the synthetic set's order (circle, square, triangle,
    cross), not the folder dataset's sorted one: the labels must be matched by name."""
    return save_artifact(tmp_path_factory.mktemp("model") / "m", make_classifier(seed=3), {})


def new_evaluation(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path, splits: list[str]
) -> str:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", model_folder, "ftjob-" + "0" * 24)
        dataset = datasets.register_path(
            session, ctx.settings, "key-test", dataset_name(), str(shapes_root)
        )
        body = EvaluationRequest(model="shapes", dataset=dataset.id, splits=splits)
        row, _ = evaluations.create(session, body, lambda _: None, "test", None)
        return row.id


def row_of(ctx: WorkerContext, evaluation_id: str) -> Evaluation:
    with ctx.sessions() as session:
        row = session.get(Evaluation, evaluation_id)
        assert row is not None
        return row


def messages(ctx: WorkerContext, evaluation_id: str) -> list[str]:
    with ctx.sessions() as session:
        rows, _ = evaluations.events(session, evaluation_id, 0, 1000)
        return [r.message for r in rows]


@torch.no_grad()
def independent_metrics(folder: Path, split_dir: Path) -> dict[str, Any]:
    """The dual head on each image of ``split_dir/<class>/``, one at a time, with the truth
    read off the folder name and the metrics computed here (sklearn's F1, a plain ECE)."""
    classifier = load_artifact(folder).classifier
    transform = classifier.backbone.transform(train=False)
    probs, truth = [], []
    for image in sorted(split_dir.glob("*/*.png")):
        x = transform(Image.open(image).convert("RGB"))[None]
        probs.append(classifier(x, head="dual")[0].double().numpy())
        truth.append(classifier.classnames.index(image.parent.name))
    p, y = np.stack(probs), np.array(truth)
    predicted, confidence = p.argmax(1), p.max(1)
    correct = predicted == y
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    ece = sum(abs(correct[bins == b].sum() - confidence[bins == b].sum()) for b in range(15)) / len(
        y
    )
    return {
        "n": len(y),
        "top1": correct.mean(),
        "macro_f1": f1_score(y, predicted, average="macro"),
        "per_class_acc": {
            name: correct[y == k].mean() for k, name in enumerate(classifier.classnames)
        },
        "ece": ece,
    }


def test_metrics_match_an_independent_computation_and_a_second_delivery_does_nothing(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path
) -> None:
    evaluation_id = new_evaluation(ctx, shapes_root, model_folder, ["ood_test", "val"])
    outcome = runner.run_evaluation(ctx, evaluation_id)
    assert outcome.status == "succeeded", outcome
    row = row_of(ctx, evaluation_id)
    assert row.status == "succeeded" and row.finished_at is not None and row.error is None
    assert row.progress_step == row.progress_total == 2
    assert row.results is not None and list(row.results) == ["ood_test", "val"]
    for split, heads in row.results.items():
        assert set(heads) == set(HEADS)
        for metrics in heads.values():
            assert {"top1", "macro_f1", "per_class_acc", "worst_group_acc", "ece", "nll"} <= set(
                metrics
            )
        expected = independent_metrics(model_folder, shapes_root / split)
        dual = heads["dual"]
        assert dual["n"] == expected["n"] > 0
        for key in ("top1", "macro_f1", "ece"):
            assert dual[key] == pytest.approx(expected[key], abs=1e-5), (split, key)
        assert dual["per_class_acc"] == pytest.approx(expected["per_class_acc"], abs=1e-6)
    events = messages(ctx, evaluation_id)
    assert any(m.startswith("ood_test: top-1") for m in events)
    assert events[-1] == "The evaluation has successfully completed"

    again = runner.run_evaluation(ctx, evaluation_id)
    assert again.status == "skipped" and "already succeeded" in again.detail
    assert messages(ctx, evaluation_id) == events
    assert row_of(ctx, evaluation_id).results == row.results


def during_load(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` once the evaluation is claimed and its model is being loaded."""
    real = runner.load_artifact

    def load(*args: Any, **kwargs: Any) -> Any:
        action()
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "load_artifact", load)


def test_a_cancel_stops_it_between_batches_and_stands(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation_id = new_evaluation(ctx, shapes_root, model_folder, ["val"])

    def cancel() -> None:
        with ctx.sessions() as session:
            assert state.cancel(session, evaluation_id)

    during_load(monkeypatch, cancel)
    outcome = runner.run_evaluation(ctx, evaluation_id)
    assert outcome.status == "cancelled" and "evaluation" in outcome.detail
    row = row_of(ctx, evaluation_id)
    assert row.status == "cancelled" and row.results is None
    assert runner.run_evaluation(ctx, evaluation_id).status == "skipped"


def test_a_stopping_worker_puts_it_back_and_the_next_delivery_runs_it(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation_id = new_evaluation(ctx, shapes_root, model_folder, ["val"])
    during_load(monkeypatch, ctx.stopping.set)
    assert runner.run_evaluation(ctx, evaluation_id).status == "released"
    assert row_of(ctx, evaluation_id).status == "queued"
    ctx.stopping.clear()
    monkeypatch.undo()
    assert runner.run_evaluation(ctx, evaluation_id).status == "succeeded"
    assert row_of(ctx, evaluation_id).attempts == 2


def test_a_held_lease_makes_a_second_delivery_wait(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path
) -> None:
    evaluation_id = new_evaluation(ctx, shapes_root, model_folder, ["val"])
    with ctx.sessions() as session:
        assert state.claim(session, evaluation_id, "other-worker", 60)
    outcome = runner.run_evaluation(ctx, evaluation_id)
    assert outcome.status == "busy" and outcome.retry_in_s is not None
    assert outcome.retry_in_s > 50


def test_a_version_deleted_after_queueing_fails_it_by_name(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path
) -> None:
    evaluation_id = new_evaluation(ctx, shapes_root, model_folder, ["val"])
    with ctx.sessions() as session:
        registry.delete_version(session, "shapes", 1)
    assert runner.run_evaluation(ctx, evaluation_id).status == "failed"
    row = row_of(ctx, evaluation_id)
    assert row.error is not None and "shapes/1 was deleted" in row.error["message"]
    # The evaluation itself is kept, and still listed under the version it measured.
    with ctx.sessions() as session:
        rows, _ = evaluations.list_evaluations(session, None, 10, model=("shapes", 1))
        assert [r.id for r in rows] == [evaluation_id]


def test_a_dataset_deleted_after_queueing_fails_it_by_name(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path
) -> None:
    evaluation_id = new_evaluation(ctx, shapes_root, model_folder, ["val"])
    dataset_id = row_of(ctx, evaluation_id).dataset_id
    # DELETE /datasets refuses while an evaluation waits on it (409); the worker still checks,
    # for a deletion that raced the evaluation's creation.
    with ctx.sessions() as session:
        with pytest.raises(Conflict, match="used by evaluation"):
            datasets.delete(session, ctx.settings, dataset_id)
        row = session.get(Dataset, dataset_id)
        assert row is not None
        row.deleted_at = int(time.time())
        session.commit()
    assert runner.run_evaluation(ctx, evaluation_id).status == "failed"
    error = row_of(ctx, evaluation_id).error
    assert error is not None and f"dataset {dataset_id} was deleted" in error["message"]


def test_the_worker_routes_the_task_and_sends_orphaned_evaluations_again(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path
) -> None:
    app = create_celery(make_context(ctx.settings))
    assert TASK_EVALUATE in app.tasks
    assert app.conf.task_routes[TASK_EVALUATE]["queue"] == ctx.settings.training_queue
    queued = new_evaluation(ctx, shapes_root, model_folder, ["val"])
    with ctx.sessions() as session:
        assert orphan_deliveries(session, 0.0, Evaluation) == [(queued, 0.0)]
        assert session.query(EvaluationEvent).count() == 2


def new_diagnosis(
    ctx: WorkerContext,
    shapes_root: Path,
    descriptions: Mapping[str, Sequence[str]],
    model: str = "test-tiny-vit",
    compare_to: Mapping[str, Sequence[str]] | None = None,
) -> str:
    with ctx.sessions() as session:
        dataset = datasets.register_path(
            session, ctx.settings, "key-test", dataset_name(), str(shapes_root)
        )
        made = description_sets.create(
            session, "set", {k: list(v) for k, v in descriptions.items()}
        )
        other = None
        if compare_to is not None:
            other = description_sets.create(
                session, "other", {k: list(v) for k, v in compare_to.items()}
            ).id
        body = DiagnoseRequest(
            dataset=dataset.id, model=model, pretrained=None, split="train", compare_to=other
        )
        row, _ = evaluations.create_diagnosis(
            session, ctx.settings, made.id, body, lambda _: None, "test", None
        )
        return row.id


@torch.no_grad()
def independent_diagnostics(
    split_dir: Path, descriptions: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """The frozen concept head's p_c image by image, with the truth read off the folder name:
    the tiny backbone made from the seed a job's config uses (0)."""
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(arch="test-tiny-vit"))
    classnames = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    classifier = Classifier(backbone, classnames, ["{c}"], descriptions).eval()
    transform = backbone.transform(train=False)
    scale = classifier.clip.logit_scale.exp()
    rows, truth = [], []
    for image in sorted(split_dir.glob("*/*.png")):
        features = classifier.image_features(transform(Image.open(image).convert("RGB"))[None])
        rows.append(core_probabilities(features, classifier.concept_head, scale)[0])
        truth.append(classnames.index(image.parent.name))
    return description_diagnostics(torch.stack(rows), truth, classnames)


def test_a_diagnosis_matches_an_independent_computation(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    evaluation_id = new_diagnosis(ctx, shapes_root, DESCRIPTIONS)
    outcome = runner.run_evaluation(ctx, evaluation_id)
    assert outcome.status == "succeeded", outcome
    row = row_of(ctx, evaluation_id)
    assert row.status == "succeeded" and row.progress_step == row.progress_total == 1
    assert row.results is not None and list(row.results) == ["diagnostics"]
    got = row.results["diagnostics"]
    expected = independent_diagnostics(shapes_root / "train", DESCRIPTIONS)
    assert got["images"] == expected["images"] > 0
    assert got["weak"] == expected["weak"]
    assert set(got["per_class"]) == set(expected["per_class"])
    for name, per_class in expected["per_class"].items():
        mine = got["per_class"][name]
        assert mine["n"] == per_class["n"] and mine["concept_top1"] == per_class["concept_top1"]
        assert mine["confused_with"] == per_class["confused_with"], name
        assert mine["pc_true"] == pytest.approx(per_class["pc_true"], abs=2e-4), name
    events = messages(ctx, evaluation_id)
    assert any(m.startswith("Description diagnostics: the frozen concept head") for m in events)
    assert events[-1] == "The evaluation has successfully completed"


def test_a_class_given_another_class_text_is_flagged_weak(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    # 'triangle' (last of the sorted classes) described as a circle: its concept-head row is
    # the circle's, and a tie goes to the first class, so no image is ever taken for it.
    copied = {**DESCRIPTIONS, "triangle": DESCRIPTIONS["circle"]}
    evaluation_id = new_diagnosis(ctx, shapes_root, copied)
    assert runner.run_evaluation(ctx, evaluation_id).status == "succeeded"
    results = row_of(ctx, evaluation_id).results
    assert results is not None
    diagnostics = results["diagnostics"]
    assert diagnostics["per_class"]["triangle"]["concept_top1"] == 0.0
    assert "triangle" in diagnostics["weak"]
    assert any(
        "WEAK descriptions" in m and "triangle (0%" in m for m in messages(ctx, evaluation_id)
    )


@torch.no_grad()
def independent_default_top1(split_dir: Path) -> float:
    """The frozen default head (the class names in the default templates) on the images."""
    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(arch="test-tiny-vit"))
    classnames = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    templates = resolve_templates(HeadConfig().templates)
    classifier = Classifier(backbone, classnames, templates, DESCRIPTIONS).eval()
    transform = backbone.transform(train=False)
    right = []
    for image in sorted(split_dir.glob("*/*.png")):
        probs = classifier(transform(Image.open(image).convert("RGB"))[None], head="default")
        right.append(classnames[int(probs.argmax())] == image.parent.name)
    return sum(right) / len(right)


def test_a_diagnosis_compares_the_concept_head_with_the_default_head_and_another_set(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    copied = {**DESCRIPTIONS, "triangle": DESCRIPTIONS["circle"]}
    evaluation_id = new_diagnosis(ctx, shapes_root, DESCRIPTIONS, compare_to=copied)
    assert runner.run_evaluation(ctx, evaluation_id).status == "succeeded"
    results = row_of(ctx, evaluation_id).results
    assert results is not None
    got = results["diagnostics"]
    assert got["default_top1"] == pytest.approx(independent_default_top1(shapes_root / "train"))
    assert got["gap"] == pytest.approx(got["concept_top1"] - got["default_top1"], abs=1e-4)
    assert got["accepted"] is (got["gap"] >= -0.03) and isinstance(got["reasons"], list)
    # The other set, on the same images: what diagnosing it alone gives, and the differences.
    other = got["compared"]
    alone = independent_diagnostics(shapes_root / "train", copied)
    assert other["concept_top1"] == alone["concept_top1"] and other["weak"] == alone["weak"]
    assert other["description_set"].startswith("desc-")
    assert other["per_class"]["triangle"]["concept_top1"] == 0.0
    diff = other["difference"]
    assert diff["concept_top1"] == pytest.approx(other["concept_top1"] - got["concept_top1"])
    assert diff["per_class"]["triangle"]["concept_top1"] == pytest.approx(
        -got["per_class"]["triangle"]["concept_top1"]
    )
    assert "triangle" in diff["weak_only_in_b"]
    assert any("on the same images: concept head" in m for m in messages(ctx, evaluation_id))


def test_a_diagnosis_of_a_backbone_missing_here_fails_with_its_message(
    ctx: WorkerContext, shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backbone_module, "DEFAULT_BACKBONE_CACHE", tmp_path / "none")
    evaluation_id = new_diagnosis(ctx, shapes_root, DESCRIPTIONS, model=OFFLINE_BACKBONE)
    assert runner.run_evaluation(ctx, evaluation_id).status == "failed"
    error = row_of(ctx, evaluation_id).error
    assert error is not None and error["code"] == "invalid_model"
    assert "is not built yet" in error["message"]


def test_a_cancelled_diagnosis_stops_and_stands(
    ctx: WorkerContext, shapes_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation_id = new_diagnosis(ctx, shapes_root, DESCRIPTIONS)
    real = runner.build_classifier

    def build(*args: Any, **kwargs: Any) -> Any:
        with ctx.sessions() as session:
            assert state.cancel(session, evaluation_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "build_classifier", build)
    assert runner.run_evaluation(ctx, evaluation_id).status == "cancelled"
    row = row_of(ctx, evaluation_id)
    assert row.status == "cancelled" and row.results is None


def test_a_registered_version_can_be_the_backbone(
    ctx: WorkerContext, shapes_root: Path, model_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", model_folder, "ftjob-" + "0" * 24)
    evaluation_id = new_diagnosis(ctx, shapes_root, DESCRIPTIONS, model="models:/shapes")
    row = row_of(ctx, evaluation_id)
    assert row.model == "models:/shapes/1" and row.model_version == 1
    assert runner.run_evaluation(ctx, evaluation_id).status == "succeeded"
