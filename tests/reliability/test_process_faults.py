"""Faults of whole processes, with the real API, worker, Redis and PostgreSQL: a worker stopped
with SIGTERM, Redis restarted under queued and running jobs, the API restarted. Nothing may be
lost or run twice; no secret may reach a log or a job event.

Redis is a server of this module's own (append-only, with a password, on a free port), never the
shared one; PostgreSQL is a fresh database on the shared server, reached with a password that
trust authentication ignores, so it can be looked for in the logs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, running_stack
from tests.live import ok, postgres_or_none, wait_for
from tests.reliability.conftest import fault_settings, prepare_database, record
from tests.reliability.images import encode, noise
from tests.reliability.jobs import events, finished, job, one_ready_version, submit
from tests.reliability.redis_server import REDIS_PASSWORD, RedisServer
from tests.service.support import API_KEY, b64, finetune_body
from tools.processes import api_process, wait_ready, worker_process

pytestmark = pytest.mark.slow

DB_PASSWORD = f"pg-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    shapes_root: Path,
    reliability_artifact: Path,
    redis_server: RedisServer,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("faults")
    postgres = postgres_or_none()
    if postgres is None:
        database_url, drop = f"sqlite:///{workdir / 'rcs.db'}", lambda: None
    else:
        database_url, drop = postgres
        database_url = database_url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    settings = fault_settings(workdir, database_url, redis_server.url, shapes_root)
    prepare_database(settings, reliability_artifact)
    try:
        with running_stack(settings, workdir, shapes_root) as built:
            yield built
    finally:
        drop()


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> dict[str, Any]:
    return stack.shapes_dataset()


def at_step(client: httpx.Client, job_id: str, step: int) -> bool:
    state = job(client, job_id)
    return state["status"] == "running" and state["progress"]["step"] >= step


def starts(client: httpx.Client, job_id: str) -> int:
    return sum(e["message"].startswith("Job started") for e in events(client, job_id))


def trained_steps(client: httpx.Client, job_id: str) -> list[int]:
    return [e["data"]["step"] for e in events(client, job_id) if e["type"] == "metrics"]


def skipped_deliveries(stack: Stack) -> int:
    log = (stack.workdir / "worker.log").read_text(errors="replace")
    return log.count("'detail': 'already succeeded'")


def test_sigterm_checkpoints_and_requeues_the_running_job(
    stack: Stack, dataset: dict[str, Any]
) -> None:
    with stack.client() as client:
        job_id = submit(client, dataset, "sigterm", steps=40)
        wait_for(lambda: at_step(client, job_id, 5), 60, "the job to train", stack)
        stopped_at = time.monotonic()
        stack.worker.stop(timeout=60)  # SIGTERM
        assert time.monotonic() - stopped_at < 30
        messages = [e["message"] for e in events(client, job_id)]
        assert "Worker stopping: checkpointed, back in the queue" in messages, stack.logs()
        assert job(client, job_id)["status"] == "queued"
        checkpoints = ok(client.get(f"/jobs/{job_id}/checkpoints"))["data"]
        assert checkpoints and checkpoints[0]["step_number"] >= 4
        stack.worker = worker_process(stack.settings, stack.workdir / "worker.log").start()
        done = wait_for(lambda: finished(client, job_id), 120, "the requeued job", stack)
        assert done["status"] == "succeeded", (done, stack.logs())
        steps = trained_steps(client, job_id)
        assert steps.count(1) == 1  # resumed from the checkpoint, not from step 1
        assert starts(client, job_id) == 2
        one_ready_version(client, "sigterm", job_id)
    record("worker_sigterm", signals=1, jobs=1, resumed_from_checkpoint=1, versions=1, lost=0)


def test_redis_restarted_under_queued_and_running_jobs(
    stack: Stack, dataset: dict[str, Any], redis_server: RedisServer
) -> None:
    image = {"model": "shapes", "images": [b64(encode(noise(), "PNG"))]}
    with stack.client() as client:
        running = submit(client, dataset, "during-redis-running", steps=30)
        wait_for(lambda: at_step(client, running, 3), 60, "the first job to run", stack)
        queued = [submit(client, dataset, f"during-redis-queued-{i}", steps=4) for i in range(2)]
        assert all(job(client, q)["status"] == "queued" for q in queued)

        skipped_before = skipped_deliveries(stack)
        redis_server.stop()
        reads = predicts = 0
        refused = client.post("/finetune", json=finetune_body(dataset["id"]))
        assert refused.status_code == 503 and "not queued" in refused.json()["error"]["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"].startswith("broker:")
        assert REDIS_PASSWORD not in ready.text
        outage_ends = time.monotonic() + 8
        while time.monotonic() < outage_ends:
            assert client.get("/jobs").status_code == 200
            assert client.get(f"/jobs/{running}").status_code == 200
            assert client.post("/predict", json=image).status_code == 200
            reads, predicts = reads + 2, predicts + 1
        redis_server.start()

        jobs = [running, *queued]
        for job_id in jobs:
            done = wait_for(lambda j=job_id: finished(client, j), 180, "the jobs to end", stack)
            assert done["status"] == "succeeded", (job_id, done, stack.logs())
        for job_id, name in zip(
            jobs,
            ["during-redis-running", "during-redis-queued-0", "during-redis-queued-1"],
            strict=True,
        ):
            one_ready_version(client, name, job_id)
            steps = trained_steps(client, job_id)
            assert len(steps) == len(set(steps)), (job_id, steps)  # no step trained twice
            assert starts(client, job_id) == 1
        wait_for(lambda: client.get("/readyz").status_code == 200, 30, "readiness", stack)
    # A delivery whose acknowledgement was lost with Redis comes again, and is skipped.
    skipped = skipped_deliveries(stack) - skipped_before
    record(
        "redis_restart",
        jobs_running=1,
        jobs_queued=2,
        outage_s=8,
        reads_during=reads,
        predicts_during=predicts,
        finetune_refused_503=1,
        redeliveries_skipped=skipped,
        jobs_lost=0,
        jobs_run_twice=0,
    )


def test_api_restart_keeps_models_and_job_history(stack: Stack) -> None:
    def snapshot(client: httpx.Client) -> dict[str, Any]:
        jobs = ok(client.get("/jobs", params={"limit": 100}))["data"]
        return {
            "models": ok(client.get("/models"))["data"],
            "jobs": jobs,
            "events": {j["id"]: events(client, j["id"]) for j in jobs},
            "datasets": ok(client.get("/datasets"))["data"],
        }

    with stack.client() as client:
        before = snapshot(client)
    stack.api.stop()
    port = int(stack.base_url.rsplit(":", 1)[1])
    stack.api = api_process(stack.settings, port, stack.workdir / "api.log").start()
    wait_ready(stack.base_url, stack.api)
    with stack.client() as client:
        after = snapshot(client)
        image = {"model": "sigterm", "images": [b64(encode(noise(), "PNG"))]}
        assert ok(client.post("/predict", json=image))["model"] == "sigterm/1"
    assert after == before
    record(
        "api_restart",
        models=len(before["models"]),
        jobs=len(before["jobs"]),
        events=sum(len(e) for e in before["events"].values()),
        lost=0,
    )


def test_no_secret_in_any_log_or_job_event(stack: Stack) -> None:
    secrets_ = [API_KEY, REDIS_PASSWORD, DB_PASSWORD]
    texts = [p.read_text(errors="replace") for p in stack.workdir.glob("*.log")]
    with stack.client() as client:
        for listed in ok(client.get("/jobs", params={"limit": 100}))["data"]:
            texts.append(str(listed))
            texts.append(str(events(client, listed["id"])))
        texts.append(client.get("/readyz").text)
        texts.append(client.get("/metrics").text)
    assert sum(len(t) for t in texts) > 10_000  # the logs and events were really read
    for secret in secrets_:
        assert not any(secret in text for text in texts), "a secret leaked"
    record("secrets", places_searched=len(texts), secrets=len(secrets_), leaks=0)
