"""Three "machines" that share only the database, the broker and a bucket on a real S3 server
process: an API process and two worker processes, each with a work folder (and download cache)
of its own. The dataset is uploaded through the API; a job whose worker is killed (SIGKILL, as
a machine lost) is finished by the other worker from the checkpoint in the bucket, and the API
serves the registered version downloaded from the bucket."""

from __future__ import annotations

import io
import secrets
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import clean_redis
from tests.live import REDIS_URL, base_settings, key_client, ok, redis_or_skip, wait_for
from tests.service.support import finetune_body
from tools.processes import Process, api_process, free_port, wait_ready, worker_process
from tools.s3_server import aws_env

pytestmark = pytest.mark.slow


def machine(shared: dict[str, str], tmp: Path, name: str) -> dict[str, str]:
    return {**shared, "RCS_WORK_DIR": str(tmp / name / "work")}


def job_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(ok(client.get(f"/jobs/{job_id}")))


def test_a_job_killed_on_one_worker_machine_finishes_on_another(
    tmp_path: Path, shapes_root: Path, bucket_url: str, s3_endpoint: str, s3fs_client: Any
) -> None:
    redis_client = redis_or_skip()
    queue = f"training-s3-{secrets.token_hex(4)}"
    shared = {
        **base_settings(tmp_path, f"sqlite:///{tmp_path / 'rcs.db'}", REDIS_URL, shapes_root),
        **aws_env(s3_endpoint),
        "RCS_STORAGE_URL": bucket_url,
        "RCS_ALLOWED_DATASET_ROOTS": "",
        "RCS_TRAINING_QUEUE": queue,
        "RCS_CHECKPOINT_EVERY": "2",
        "RCS_LEASE_S": "4",
    }
    del shared["RCS_ARTIFACTS_URL"]  # everything goes to the bucket
    port = free_port()
    api = api_process(machine(shared, tmp_path, "api"), port, tmp_path / "api.log").start()
    workers: list[Process] = []

    def logs() -> str:
        return "\n".join(f"--- {p.log_path.name} ---\n{p.tail(60)}" for p in [api, *workers])

    class Logs:
        def logs(self) -> str:
            return logs()

    try:
        wait_ready(f"http://127.0.0.1:{port}", api)
        first = worker_process(
            machine(shared, tmp_path, "worker-a"), tmp_path / "worker-a.log", "a"
        ).start()
        workers.append(first)
        with key_client(f"http://127.0.0.1:{port}") as client:
            archive = io.BytesIO()
            with tarfile.open(fileobj=archive, mode="w:gz") as tar:
                tar.add(shapes_root, arcname="shapes")
            files = {"file": ("shapes.tar.gz", archive.getvalue(), "application/gzip")}
            dataset = ok(client.post("/datasets/upload", data={"name": "shapes"}, files=files))
            refused = client.post("/datasets", json={"name": "p", "path": str(shapes_root)})
            assert refused.status_code == 422 and "RCS_STORAGE_URL" in refused.text

            body = finetune_body(
                dataset["id"],
                hyperparameters={"max_steps": 60, "batch_size": 8},
                registered_model_name="machines",
            )
            job = ok(client.post("/finetune", json=body))
            index = f"{bucket_url}/jobs/{job['id']}/checkpoints.json"
            wait_for(lambda: s3fs_client.exists(index), 90, "a checkpoint in the bucket", Logs())
            first.kill()
            second = worker_process(
                machine(shared, tmp_path, "worker-b"), tmp_path / "worker-b.log", "b"
            ).start()
            workers.append(second)

            def finished() -> dict[str, Any] | None:
                state = job_state(client, job["id"])
                return state if state["status"] in ("succeeded", "failed", "cancelled") else None

            done = wait_for(finished, 150, "the job on the second worker", Logs())
            assert done["status"] == "succeeded", (done, logs())
            events = ok(client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}))["data"]
            starts = [e for e in events if e["message"].startswith("Job started")]
            assert len(starts) == 2 and "(attempt 2)" in starts[1]["message"]
            later = events[events.index(starts[1]) :]
            steps = [e["data"]["step"] for e in later if e["type"] == "metrics"]
            assert steps and min(steps) > 1, "the second worker resumed, not started over"

            # Nothing was shared on disk: each machine's folder has only its own files.
            assert not (tmp_path / "worker-b" / "work" / "datasets").exists()
            assert not (tmp_path / "api" / "work" / "jobs").exists()
            image = shapes_root / "ood_test" / "circle" / "0000.png"
            predicted = ok(
                client.post(
                    "/predict",
                    data={"model": done["fine_tuned_model"]},
                    files=[("files", ("c.png", image.read_bytes(), "image/png"))],
                )
            )
            assert predicted["model"] == done["fine_tuned_model"]
            served = tmp_path / "api" / "work" / "cache" / "artifacts"
            assert [p for p in served.iterdir() if p.is_dir()], "served from the API's download"
    finally:
        for process in [*workers, api]:
            process.stop()
        clean_redis(redis_client, queue)
