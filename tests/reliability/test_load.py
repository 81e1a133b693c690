"""Sustained /predict from 64 concurrent clients on loopback, for a bounded time and request
count, while a fine-tuning job trains: no 5xx, memory flat, and the job keeps making progress.

The broker is Kombu's SQLite transport (no Redis needed); the database PostgreSQL where it can be
reached. API, worker and clients share the machine's cores, as on a small single-node install.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import postgres_or_none
from tests.reliability.clients import hammer
from tests.reliability.conftest import live_settings, prepare_database, record, rss_kib
from tests.reliability.images import encode, noise
from tests.service.support import API_KEY, b64, finetune_body
from tools.processes import Process, api_process, free_port, wait_ready, worker_process

pytestmark = pytest.mark.slow

CLIENTS = 64
DURATION_S = 60.0
MAX_REQUESTS = 20_000
WARM_UP = 256
ERRORS: list[str] = []


@pytest.fixture(scope="module")
def processes(
    tmp_path_factory: pytest.TempPathFactory, shapes_root: Path, reliability_artifact: Path
) -> Iterator[tuple[str, Process, Path]]:
    workdir = tmp_path_factory.mktemp("load")
    postgres = postgres_or_none()
    database_url, drop = postgres or (f"sqlite:///{workdir / 'rcs.db'}", lambda: None)
    settings = {
        **live_settings(workdir, database_url, shapes_root),
        "RCS_CHECKPOINT_EVERY": "50",
    }
    prepare_database(settings, reliability_artifact)
    port = free_port()
    api = api_process(settings, port, workdir / "api.log").start()
    worker = worker_process(settings, workdir / "worker.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", api)
        worker.start()
        yield f"http://127.0.0.1:{port}", api, shapes_root
    finally:
        worker.stop()
        api.stop()
        drop()


def progress(client: httpx.Client, job_id: str) -> int:
    return int(client.get(f"/jobs/{job_id}").json()["progress"]["step"])


def start_training(client: httpx.Client, data_root: Path) -> str:
    dataset = client.post("/datasets", json={"name": "shapes", "path": str(data_root)}).json()
    body = finetune_body(dataset["id"], hyperparameters={"max_steps": 100_000, "batch_size": 8})
    job_id = str(client.post("/finetune", json=body).json()["id"])
    deadline = time.monotonic() + 120
    while progress(client, job_id) < 2:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.5)
    return job_id


def test_sustained_predict_load_with_training_alongside(
    processes: tuple[str, Process, Path],
) -> None:
    base_url, api, data_root = processes
    assert api.popen is not None
    pid = api.popen.pid
    body = {"model": "shapes", "images": [b64(encode(noise(32), "PNG"))], "top_k": 2}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        job_id = start_training(client, data_root)
        warm = asyncio.run(hammer(base_url, body, 60, WARM_UP, CLIENTS, ERRORS))
        assert warm.get("200") == warm.total(), warm
        rss_start, step_start = rss_kib(pid), progress(client, job_id)
        started = time.monotonic()
        outcomes = asyncio.run(hammer(base_url, body, DURATION_S, MAX_REQUESTS, CLIENTS, ERRORS))
        elapsed = time.monotonic() - started
        rss_end, step_end = rss_kib(pid), progress(client, job_id)
        assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    retried = outcomes.pop("connection_reset_retried", 0)
    total = outcomes.total()
    server_errors = {k: v for k, v in outcomes.items() if not k.isdigit() or k >= "500"}
    growth_mib = (rss_end - rss_start) / 1024
    record(
        "predict_load",
        clients=CLIENTS,
        seconds=round(elapsed, 1),
        requests=total,
        requests_per_s=round(total / elapsed, 1),
        statuses=dict(outcomes),
        connection_resets_retried=retried,
        server_errors=sum(server_errors.values()),
        rss_start_mib=round(rss_start / 1024),
        rss_end_mib=round(rss_end / 1024),
        training_steps_during=step_end - step_start,
    )
    assert server_errors == {}, (outcomes, ERRORS)
    assert outcomes.get("200", 0) >= 0.99 * total, outcomes
    assert growth_mib < 64, f"the API grew by {growth_mib:.0f} MiB under load"
    assert step_end - step_start >= 5, "training stalled under the load"
