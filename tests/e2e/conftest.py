"""The real processes: uvicorn serving the API and a Celery worker, on Redis, with SQLite or
PostgreSQL for metadata. Skips (with the reason) only when Redis or PostgreSQL cannot be reached.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import (
    REDIS_URL,
    base_settings,
    key_client,
    ok,
    postgres_database_or_skip,
    redis_or_skip,
)
from tests.service.support import API_KEY
from tools.processes import Process, api_process, free_port, wait_ready, worker_process


@dataclass
class Stack:
    base_url: str
    settings: dict[str, str]
    api: Process
    worker: Process
    workdir: Path
    data: Path

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        return key_client(self.base_url, key)

    def restart_worker(self, kill: bool) -> None:
        if kill:
            self.worker.kill()
        else:
            self.worker.stop()
        self.worker = worker_process(self.settings, self.workdir / "worker.log").start()

    def logs(self) -> str:
        return f"--- api ---\n{self.api.tail()}\n--- worker ---\n{self.worker.tail(80)}"

    def shapes_dataset(self) -> dict[str, Any]:
        """Register the shapes dataset through the API; its record."""
        with self.client() as client:
            return dict(
                ok(client.post("/datasets", json={"name": "shapes", "path": str(self.data)}))
            )


@contextmanager
def running_stack(settings: dict[str, str], workdir: Path, data: Path) -> Iterator[Stack]:
    """The API and a worker on ``settings``, both stopped at the end (tests may replace either
    process on the yielded stack: the ones running then are stopped)."""
    port = free_port()
    api = api_process(settings, port, workdir / "api.log").start()
    built: Stack | None = None
    try:
        wait_ready(f"http://127.0.0.1:{port}", api)
        worker = worker_process(settings, workdir / "worker.log").start()
        built = Stack(f"http://127.0.0.1:{port}", settings, api, worker, workdir, data)
        yield built
    finally:
        if built is not None:
            built.worker.stop()
            api = built.api
        api.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shapes_root: Path
) -> Iterator[Stack]:
    redis_client = redis_or_skip()
    drop: Callable[[], None] = lambda: None  # noqa: E731
    workdir = tmp_path_factory.mktemp(f"e2e-{request.param}")
    if request.param == "postgres":
        database_url, drop = postgres_database_or_skip()
    else:
        database_url = f"sqlite:///{workdir / 'rcs.db'}"
    queue = f"training-e2e-{secrets.token_hex(4)}"
    settings = {
        **base_settings(workdir, database_url, REDIS_URL, shapes_root),
        "RCS_TRAINING_QUEUE": queue,
        "RCS_CHECKPOINT_EVERY": "2",
        "RCS_LEASE_S": "4",
        "RCS_MAX_PREDICT_BYTES": "200000",
    }
    try:
        with running_stack(settings, workdir, shapes_root) as built:
            yield built
    finally:
        drop()
        clean_redis(redis_client, queue)


def clean_redis(client: Any, queue: str) -> None:
    """Remove this run's queue, bindings and unacknowledged messages (a killed worker's)."""
    client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
    for tag, raw in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)
