"""Issue 13, part 0: the service accepts every backbone the library does, and only those.

The offline backbone by name, an open_clip model folder (``local-dir:`` or a plain path) or a
weights file under ``RCS_ALLOWED_MODEL_ROOTS``; the worker confines such paths again, and a job
on a worker without the offline backbone fails with the command that builds it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models import backbone as backbone_module
from models.backbone import LOCAL_DIR, OFFLINE_BACKBONE
from service.db.tables import Job
from tests.service.support import finetune_body, make_settings, new_job, worker_context
from worker.runner import WorkerContext, run_job


@pytest.fixture
def model_root(tmp_path: Path, artifact_folder: Path) -> Path:
    """An allowed model root holding a copy of a real open_clip folder (the tiny model)."""
    root = tmp_path / "models"
    shutil.copytree(artifact_folder, root / "tiny")
    return root


@pytest.fixture
def settings_overrides(model_root: Path) -> dict[str, Any]:
    return {"allowed_model_roots": [model_root]}


def stored_backbone(client: TestClient, job_id: str) -> dict[str, Any]:
    ctx = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        backbone: dict[str, Any] = job.run_config["backbone"]
        return backbone


def test_the_offline_backbone_is_accepted_by_name(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    response = client.post("/finetune", json=finetune_body(dataset["id"], model=OFFLINE_BACKBONE))
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["model"] == OFFLINE_BACKBONE
    # A pretrained backbone: the auto learning rate is the one that keeps its features.
    body = finetune_body(dataset["id"], model=OFFLINE_BACKBONE, hyperparameters={})
    assert client.post("/finetune", json=body).json()["hyperparameters"]["learning_rate"] == 1e-5
    assert stored_backbone(client, job["id"])["arch"] == OFFLINE_BACKBONE


@pytest.mark.parametrize("prefix", [LOCAL_DIR, ""])
def test_a_model_folder_under_an_allowed_root_is_accepted_by_its_real_path(
    client: TestClient, dataset: dict[str, Any], model_root: Path, prefix: str
) -> None:
    link = model_root / "alias"
    link.symlink_to(model_root / "tiny")  # a link inside the root to a folder inside it
    response = client.post("/finetune", json=finetune_body(dataset["id"], model=f"{prefix}{link}"))
    assert response.status_code == 200, response.text
    arch = stored_backbone(client, response.json()["id"])["arch"]
    assert arch == LOCAL_DIR + os.path.realpath(model_root / "tiny")


def _refusal(client: TestClient, dataset: dict[str, Any], **change: Any) -> tuple[str, str]:
    response = client.post("/finetune", json=finetune_body(dataset["id"], **change))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    return error["param"], error["message"]


def test_model_paths_outside_the_allowed_roots_are_refused(
    client: TestClient, dataset: dict[str, Any], model_root: Path, artifact_folder: Path
) -> None:
    outside = _refusal(client, dataset, model=f"{LOCAL_DIR}{artifact_folder}")
    assert outside[0] == "model" and "not under an allowed model root" in outside[1]
    escape = model_root / "escape"
    escape.symlink_to(artifact_folder)  # inside the root by name, outside once resolved
    param, message = _refusal(client, dataset, model=str(escape))
    assert param == "model" and "not under an allowed model root" in message
    (model_root / "empty").mkdir()
    param, message = _refusal(client, dataset, model=str(model_root / "empty"))
    assert param == "model" and "no open_clip_config.json" in message
    missing = _refusal(client, dataset, model=str(model_root / "missing"))
    assert missing == ("model", f"{model_root / 'missing'} does not exist")


def test_weights_files_are_confined_like_folders(
    client: TestClient, dataset: dict[str, Any], model_root: Path, artifact_folder: Path
) -> None:
    weights = model_root / "tiny" / "open_clip_model.safetensors"
    body = finetune_body(dataset["id"], pretrained=str(weights))
    response = client.post("/finetune", json=body)
    assert response.status_code == 200, response.text
    assert stored_backbone(client, response.json()["id"])["pretrained"] == str(weights)
    outside = artifact_folder / "open_clip_model.safetensors"
    param, message = _refusal(client, dataset, pretrained=str(outside))
    assert param == "pretrained" and "not under an allowed model root" in message
    param, message = _refusal(client, dataset, pretrained=str(model_root / "tiny"))
    assert param == "pretrained" and "not a weights file" in message


@pytest.mark.parametrize(
    ("change", "param", "needle"),
    [
        ({"model": OFFLINE_BACKBONE, "pretrained": "openai"}, "pretrained", "its own weights"),
        ({"model": "no-such-arch"}, "model", OFFLINE_BACKBONE),
    ],
)
def test_backbone_refusals_name_what_is_accepted(
    client: TestClient, dataset: dict[str, Any], change: dict[str, Any], param: str, needle: str
) -> None:
    got_param, message = _refusal(client, dataset, **change)
    assert got_param == param and needle in message


@pytest.mark.parametrize("settings_overrides", [{}])
def test_without_model_roots_server_paths_are_refused_naming_the_setting(
    client: TestClient, dataset: dict[str, Any], model_root: Path
) -> None:
    param, message = _refusal(client, dataset, model=str(model_root / "tiny"))
    assert param == "model" and "RCS_ALLOWED_MODEL_ROOTS is empty" in message


# ---------------------------------------------------------------------------------------------
# On the worker


def worker_ctx(tmp_path: Path, shapes_root: Path, model_root: Path) -> WorkerContext:
    settings = make_settings(tmp_path, shapes_root, allowed_model_roots=[model_root])
    return worker_context(settings, event_every_s=0.0)


def job_error(ctx: WorkerContext, job_id: str) -> str:
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        return str(job.error["message"])


@pytest.mark.slow
def test_a_job_from_a_model_folder_trains_and_registers(
    tmp_path: Path, shapes_root: Path, model_root: Path
) -> None:
    ctx = worker_ctx(tmp_path, shapes_root, model_root)
    # The folder holds random weights: the pre-training guard (which judges every model folder,
    # as it may hold real weights) would find its concept head at chance and fail the DRM job.
    model = f"{LOCAL_DIR}{model_root / 'tiny'}"
    job_id = new_job(ctx, shapes_root, model=model, allow_weak_descriptions=True)
    outcome = run_job(ctx, job_id)
    assert outcome.status == "succeeded", outcome


def test_the_worker_confines_model_paths_again(
    tmp_path: Path, shapes_root: Path, model_root: Path
) -> None:
    ctx = worker_ctx(tmp_path, shapes_root, model_root)
    job_id = new_job(ctx, shapes_root, model=str(model_root / "tiny"))
    ctx.settings.allowed_model_roots = [tmp_path / "elsewhere"]  # this worker allows another root
    assert run_job(ctx, job_id).status == "failed"
    assert "not under an allowed model root on this worker" in job_error(ctx, job_id)


def test_a_worker_without_the_offline_backbone_fails_the_job_saying_how_to_build_it(
    tmp_path: Path, shapes_root: Path, model_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backbone_module, "DEFAULT_BACKBONE_CACHE", tmp_path / "no-cache")
    ctx = worker_ctx(tmp_path, shapes_root, model_root)
    job_id = new_job(ctx, shapes_root, model=OFFLINE_BACKBONE)
    assert run_job(ctx, job_id).status == "failed"
    message = job_error(ctx, job_id)
    assert "not built yet" in message and "python -m models build-offline-backbone" in message
