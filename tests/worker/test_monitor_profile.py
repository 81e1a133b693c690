"""The shift monitor's reference profile on the worker: queued when a job registers its
version and sent once committed, and made by an imported version's first evaluation of its
validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.datasets import service as datasets
from service.db.tables import Evaluation, JobEvent, MonitorProfile
from service.evaluations import service as evaluations
from service.evaluations.schemas import EvaluationRequest
from service.queue import TASK_EVALUATE
from tests.service.support import (
    dataset_name,
    make_settings,
    new_job,
    register_artifact,
    worker_context,
    zeroshot_artifact,
)
from worker.evaluations import run_evaluation
from worker.lease import WorkerContext
from worker.runner import run_job


@pytest.fixture
def ctx(tmp_path: Path, shapes_root: Path) -> WorkerContext:
    return worker_context(make_settings(tmp_path, shapes_root))


@pytest.fixture(scope="module")
def artifact_folder(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zeroshot_artifact(shapes_root, tmp_path_factory.mktemp("artifact") / "model")


def profile_row(ctx: WorkerContext) -> MonitorProfile | None:
    with ctx.sessions() as session:
        row = session.scalar(select(MonitorProfile))
        if row is not None:
            session.expunge(row)
        return row


@pytest.mark.slow
def test_a_registered_version_gets_its_profile_from_a_queued_evaluation(
    ctx: WorkerContext, shapes_root: Path
) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    ctx.send = lambda task, payload, _: sent.append((task, payload))
    job_id = new_job(ctx, shapes_root)
    assert run_job(ctx, job_id).status == "succeeded"
    [(task, payload)] = sent
    assert task == TASK_EVALUATE
    with ctx.sessions() as session:
        evaluation = session.get(Evaluation, payload["evaluation_id"])
        assert evaluation is not None and evaluation.kind == "profile"
        assert evaluation.model == "shapes/1" and evaluation.splits == ["val"]
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
        assert f"Monitoring profile queued as evaluation {evaluation.id}" in list(messages)
    assert profile_row(ctx) is None
    assert run_evaluation(ctx, payload["evaluation_id"]).status == "succeeded"
    row = profile_row(ctx)
    assert row is not None and row.split == "val" and row.evaluation_id == evaluation.id
    assert (
        row.summary["n"] == len(list((shapes_root / "val").glob("*/*")))
        and 0 <= row.summary["accuracy"] <= 1
    )


def test_an_imported_versions_first_evaluation_of_its_val_split_profiles_it(
    ctx: WorkerContext, shapes_root: Path, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "4" * 24)
        dataset = datasets.register_path(
            session, ctx.settings, "key", dataset_name(), str(shapes_root)
        )
        body = EvaluationRequest(model="shapes/1", dataset=dataset.id, splits=["test"])
        only_test, _ = evaluations.create(session, body, lambda _: None, "key", None)
        body = EvaluationRequest(model="shapes/1", dataset=dataset.id, splits=["val", "test"])
        with_val, _ = evaluations.create(session, body, lambda _: None, "key", None)
    assert run_evaluation(ctx, only_test.id).status == "succeeded"
    assert profile_row(ctx) is None  # no validation split measured: nothing to profile on
    assert run_evaluation(ctx, with_val.id).status == "succeeded"
    row = profile_row(ctx)
    assert row is not None and row.split == "val" and row.evaluation_id == with_val.id
