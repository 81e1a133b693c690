"""``/jobs/{id}/checkpoints`` lists only checkpoints that can be used: a running job's files on
disk, and once the job is over its final checkpoint, which is the registered version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs import state
from tests.service.support import AUTH, FakeBroker, b64, dataset_name, finetune_body, png_bytes
from tests.worker.test_runner import ctx, job_row, when
from worker.runner import WorkerContext, run_job, saved_steps

pytestmark = pytest.mark.slow
__all__ = ["ctx"]  # the fixture, imported for this module's tests


@pytest.fixture
def api(ctx: WorkerContext) -> Iterator[TestClient]:
    """The API over the worker's database and artifact store."""
    with TestClient(create_app(ctx.settings)) as client:
        client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        client.headers.update(AUTH)
        yield client


def new_job(api: TestClient, shapes_root: Path, **overrides: Any) -> str:
    """A job created through the API (its task is not sent: the test runs it in-process)."""
    dataset = api.post("/datasets", json={"name": dataset_name(), "path": str(shapes_root)})
    assert dataset.status_code == 200, dataset.text
    job = api.post("/finetune", json=finetune_body(dataset.json()["id"], **overrides))
    assert job.status_code == 200, job.text
    job_id: str = job.json()["id"]
    return job_id


def listed(api: TestClient, job_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/jobs/{job_id}/checkpoints")
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_a_succeeded_job_lists_its_final_checkpoint_as_a_usable_model(
    ctx: WorkerContext, api: TestClient, shapes_root: Path
) -> None:
    job_id = new_job(api, shapes_root, hyperparameters={"n_epochs": 2, "batch_size": 8})
    assert run_job(ctx, job_id).status == "succeeded"
    assert not (ctx.settings.jobs_dir / job_id).exists()  # the periodic checkpoints' files
    [final] = listed(api, job_id)
    assert final["step_number"] == 8 and final["fine_tuned_model_checkpoint"] == "shapes/1"
    assert "selected" in final["metrics"] and "losses" in final["metrics"]
    body = {"model": final["fine_tuned_model_checkpoint"], "images": [b64(png_bytes())]}
    assert api.post("/predict", json=body).status_code == 200

    assert api.delete("/models/shapes/versions/1").status_code == 204
    assert listed(api, job_id) == []


def test_a_released_job_lists_what_is_on_disk_and_once_cancelled_nothing(
    ctx: WorkerContext, api: TestClient, shapes_root: Path
) -> None:
    job_id = new_job(api, shapes_root, hyperparameters={"max_steps": 40, "batch_size": 8})
    watcher = when(lambda: job_row(ctx, job_id).progress_step >= 9, ctx.stopping.set)
    assert run_job(ctx, job_id).status == "released"
    watcher.join()
    on_disk = saved_steps(ctx.settings.jobs_dir / job_id / "checkpoints")
    steps = {c["step_number"] for c in listed(api, job_id)}
    # Periodic checkpoints every 2 steps, the loop keeping 2: 2, 4, ... were removed.
    assert steps and steps <= on_disk and 2 not in steps
    assert all(c["fine_tuned_model_checkpoint"] is None for c in listed(api, job_id))

    # Cancelled while back in the queue: nothing will resume from them.
    assert api.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert listed(api, job_id) == []
    ctx.stopping.clear()
    assert run_job(ctx, job_id).status == "skipped"  # its delivery cleans the folder up
    assert not (ctx.settings.jobs_dir / job_id).exists()


def test_a_cancelled_running_job_lists_no_checkpoints(
    ctx: WorkerContext, api: TestClient, shapes_root: Path
) -> None:
    job_id = new_job(api, shapes_root, hyperparameters={"max_steps": 400, "batch_size": 8})

    def cancel() -> None:
        with ctx.sessions() as session:
            state.cancel(session, job_id)

    watcher = when(lambda: job_row(ctx, job_id).progress_step >= 7, cancel)
    assert run_job(ctx, job_id).status == "cancelled"
    watcher.join()
    assert not (ctx.settings.jobs_dir / job_id).exists()
    assert listed(api, job_id) == []
