"""The pre-training guard through a job, in-process on the worker: a DRM job whose descriptions
leave the frozen concept head near chance fails before training with code
``weak_descriptions``; allowed explicitly, it trains and its events and card carry the warning.

Every class gets the same description, so the concept head takes every image for one class
(25% on four classes); the tiny backbone's weights come from a file, so it counts as pretrained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.backbone import create_backbone
from models.config import BackboneConfig
from service.db.tables import Job, JobEvent, ModelVersion
from tests.service.support import make_settings, new_job, worker_context
from worker.runner import WorkerContext, run_job

SAME = {c: "a shape" for c in ("circle", "square", "triangle", "cross")}


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    source = create_backbone(BackboneConfig(arch="test-tiny-vit"))
    path = tmp_path / "weights" / "tiny.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    return path


@pytest.fixture
def ctx(tmp_path: Path, shapes_root: Path, weights: Path) -> WorkerContext:
    settings = make_settings(tmp_path, shapes_root, allowed_model_roots=[weights.parent])
    return worker_context(settings, event_every_s=0.0)


def messages(ctx: WorkerContext, job_id: str) -> list[str]:
    with ctx.sessions() as session:
        rows = session.query(JobEvent).filter(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        return [r.message for r in rows]


def test_a_drm_job_fails_before_training_and_registers_nothing(
    ctx: WorkerContext, shapes_root: Path, weights: Path
) -> None:
    job_id = new_job(ctx, shapes_root, pretrained=str(weights), descriptions=SAME)
    assert run_job(ctx, job_id).status == "failed"
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.error is not None
        assert job.error["code"] == "weak_descriptions"
        assert "near chance" in job.error["message"] and "'square'" in job.error["message"]
        assert "allow_weak_descriptions" in job.error["message"]
        assert job.progress_step == 0 and session.query(ModelVersion).count() == 0


def test_allowed_it_trains_with_the_warning_in_its_events_and_card(
    ctx: WorkerContext, shapes_root: Path, weights: Path
) -> None:
    job_id = new_job(
        ctx, shapes_root, pretrained=str(weights), descriptions=SAME, allow_weak_descriptions=True
    )
    assert run_job(ctx, job_id).status == "succeeded"
    assert any(
        m.startswith("WARNING: the frozen concept head is near chance")
        for m in messages(ctx, job_id)
    )
    with ctx.sessions() as session:
        [version] = session.query(ModelVersion).all()
        warning = version.card["description_diagnostics"]["warning"]
        assert "3 of 4 classes weak" in warning
