"""What the tests on real processes share (e2e, reliability, chaos): the local Redis and
PostgreSQL (or a skip naming why), the settings every real API and worker runs with, an
authorized client, and the wait loop.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from tests.service.support import API_KEY

REDIS_URL = "redis://127.0.0.1:6379/0"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


def redis_or_skip() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    return client


def postgres_database_or_skip() -> tuple[str, Callable[[], None]]:
    """A fresh database for this run, and how to drop it."""
    import psycopg

    name = f"rcs_e2e_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_ADMIN} is unreachable: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


def postgres_or_none() -> tuple[str, Callable[[], None]] | None:
    """A fresh PostgreSQL database and how to drop it, or None where PostgreSQL is unreachable."""
    try:
        return postgres_database_or_skip()
    except pytest.skip.Exception:
        return None


def base_settings(
    workdir: Path, database_url: str, broker_url: str, data_root: Path
) -> dict[str, str]:
    """What every real API and worker of these tests runs with: production mode, CPU, one
    torch thread, folders under ``workdir``."""
    return {
        "RCS_ENV": "production",
        "RCS_DATABASE_URL": database_url,
        "RCS_BROKER_URL": broker_url,
        "RCS_ARTIFACTS_URL": str(workdir / "artifacts"),
        "RCS_WORK_DIR": str(workdir / "work"),
        "RCS_ALLOWED_DATASET_ROOTS": str(data_root),
        "RCS_BOOTSTRAP_API_KEY": API_KEY,
        "RCS_DEVICE": "cpu",
        "RCS_TORCH_THREADS": "1",
    }


def key_client(base_url: str, key: str | None = API_KEY, timeout: float = 30) -> httpx.Client:
    """A client of the API at ``base_url`` that sends ``key`` (none when None)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=timeout)


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 400, f"{response.status_code}: {response.text}"
    return response.json()


class Logged(Protocol):
    def logs(self) -> str: ...


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, stack: Logged | None = None
) -> Any:
    """The first true value ``check()`` gives within ``timeout`` s; else fail with the logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs() if stack else ''}")
