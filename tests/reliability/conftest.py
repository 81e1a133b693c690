"""A live API process for hostile-input, fuzzing and access tests, and what they share.

The API runs as a real uvicorn process (as deployed: its own memory, its own event loop) on
PostgreSQL when it can be reached and SQLite otherwise, with Kombu's SQLite transport as the
broker, so these tests need no Redis. A zero-shot version of the tiny model is registered as
``shapes/1`` before the API starts, and a ``predict``-only key is stored beside the bootstrap key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.auth.service import create_key
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.storage import ArtifactStore
from tests.live import base_settings, key_client, postgres_or_none
from tests.reliability.images import fake_ghostscript
from tests.reliability.redis_server import REDIS_PASSWORD, RedisServer
from tests.service.support import API_KEY, register_artifact, zeroshot_artifact
from tools.processes import Process, api_process, free_port, wait_ready

FIGURES = Path(os.environ.get("RCS_RELIABILITY_FIGURES", "runs/reliability/figures.jsonl"))


def record(test: str, **figures: object) -> None:
    """Append what a test measured (requests, faults, losses) for tests/RELIABILITY.md."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, **figures}) + "\n")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``) or its peak so far (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


@dataclass
class LiveApi:
    base_url: str
    process: Process
    settings: dict[str, str]
    predict_key: str
    database: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        return key_client(self.base_url, key, timeout=60)


def live_settings(workdir: Path, database_url: str, data_root: Path) -> dict[str, str]:
    return {
        **base_settings(
            workdir, database_url, f"sqla+sqlite:///{workdir / 'broker.db'}", data_root
        ),
        "RCS_MAX_PREDICT_BYTES": "2000000",
        "RCS_MAX_UPLOAD_BYTES": "5000000",
        "RCS_MAX_EXTRACTED_BYTES": "20000000",
        "RCS_MAX_IMAGE_PIXELS": "4000000",
    }


def fault_settings(
    workdir: Path, database_url: str, broker_url: str, data_root: Path
) -> dict[str, str]:
    """The API's and workers' settings for process faults: Redis as the broker, a checkpoint
    every 2 steps and a 4 s lease, so a killed worker's job is taken over within seconds."""
    return {
        **base_settings(workdir, database_url, broker_url, data_root),
        "RCS_CHECKPOINT_EVERY": "2",
        "RCS_LEASE_S": "4",
        "RCS_READINESS_TIMEOUT_S": "1",
    }


def prepare_database(settings: dict[str, str], artifact: Path) -> str:
    """Migrate, register ``artifact`` as ``shapes/1`` and store a predict-only key; the key."""
    upgrade(settings["RCS_DATABASE_URL"])
    engine = make_engine(settings["RCS_DATABASE_URL"])
    try:
        with make_sessionmaker(engine)() as session:
            store = ArtifactStore(
                settings["RCS_ARTIFACTS_URL"], Path(settings["RCS_WORK_DIR"]) / "cache"
            )
            register_artifact(session, store, "shapes", artifact, "ftjob-" + "a" * 24)
            _, key = create_key(session, "predict-only", ["predict"])
    finally:
        engine.dispose()
    return key


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the module's own, which its tests may stop and start again."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), REDIS_PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def reliability_artifact(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return zeroshot_artifact(shapes_root, tmp_path_factory.mktemp("rel-artifact") / "model")


@pytest.fixture(scope="session")
def live_api(
    tmp_path_factory: pytest.TempPathFactory, shapes_root: Path, reliability_artifact: Path
) -> Iterator[LiveApi]:
    with running_live_api(
        tmp_path_factory.mktemp("live-api"), shapes_root, reliability_artifact
    ) as api:
        yield api


@contextmanager
def running_live_api(
    workdir: Path, shapes_root: Path, reliability_artifact: Path, ready_timeout: float = 180.0
) -> Iterator[LiveApi]:
    """A live API of its own (the fixture's is shared by the session), stopped at the end."""
    postgres = postgres_or_none()
    database_url, drop = postgres or (f"sqlite:///{workdir / 'rcs.db'}", lambda: None)
    # A gs that logs its calls: test_hostile_input.py checks no EPS upload ever ran it.
    settings = {**live_settings(workdir, database_url, shapes_root), **fake_ghostscript(workdir)}
    try:
        predict_key = prepare_database(settings, reliability_artifact)
        port = free_port()
        api = api_process(settings, port, workdir / "api.log").start()
        try:
            wait_ready(f"http://127.0.0.1:{port}", api, ready_timeout)
            kind = "postgresql" if postgres else "sqlite"
            yield LiveApi(f"http://127.0.0.1:{port}", api, settings, predict_key, kind)
        finally:
            api.stop()
    finally:
        drop()
