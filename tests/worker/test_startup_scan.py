"""A starting worker's recovery scan (jobs a dead worker left) on a database that cannot answer
it yet: a fresh one the API has not migrated, as when the worker starts beside ``serve``."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import pytest

from service.db.migrate import upgrade
from tests.live import postgres_database_or_skip
from tests.service.support import make_settings
from tools.processes import Process, worker_process
from worker.app import make_context, recover_at_start, resend_orphans

WAITING = "start-up recovery scan: the database cannot answer it yet"
DONE = "start-up recovery scan done"


def _wait(check: object, timeout: float, what: str, worker: Process) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        if not worker.alive():
            break
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{worker.tail(80)}")


@pytest.mark.slow
def test_a_worker_started_on_a_fresh_postgresql_database_waits_for_its_migration(
    tmp_path: Path,
) -> None:
    """The real worker process on a fresh PostgreSQL database (no tables): one line saying it
    waits, no traceback, and the scan completes once the database is migrated."""
    database_url, drop = postgres_database_or_skip()
    env = {
        "RCS_ENV": "local",
        "RCS_DATABASE_URL": database_url,
        "RCS_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "RCS_TRAINING_QUEUE": f"training-scan-{secrets.token_hex(4)}",
        "RCS_ARTIFACTS_URL": str(tmp_path / "artifacts"),
        "RCS_WORK_DIR": str(tmp_path / "work"),
        "RCS_DEVICE": "cpu",
        "RCS_WORKER_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    worker = worker_process(env, tmp_path / "worker.log").start()
    try:
        _wait(lambda: WAITING in worker.tail(200), 120, "the scan to find no tables", worker)
        time.sleep(3)  # past a retry or two: they must not log again
        upgrade(database_url)
        _wait(lambda: DONE in worker.tail(200), 60, "the scan after the migration", worker)
        assert worker.alive()
    finally:
        worker.stop()
        drop()
    log = worker.tail(400)
    assert "Traceback" not in log and "Signal handler" not in log, log
    assert log.count(WAITING) == 1, log
    assert 'relation "jobs" does not exist' in log, log


def test_the_scan_gives_up_after_its_bound_and_stops_with_the_worker(
    tmp_path: Path, shapes_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database never migrated: the retries end after ``wait_s`` with one error line (no
    traceback); a stopping worker ends them at once."""
    settings = make_settings(tmp_path, shapes_root)  # a SQLite file no one migrates
    ctx = make_context(settings)
    sent: list[str] = []

    def scan() -> tuple[int, int]:
        return resend_orphans(ctx, lambda task, payload, countdown: sent.append(task))

    with caplog.at_level(logging.INFO, logger="worker.app"):
        thread = recover_at_start(scan, ctx.stopping, wait_s=0.5, retry_s=0.05)
        assert thread is not None
        thread.join(30)
        assert not thread.is_alive()
    messages = [r.getMessage() for r in caplog.records]
    assert sum(WAITING in m for m in messages) == 1, messages
    assert any("given up" in m and "no such table" in m for m in messages), messages
    assert not any(r.exc_info for r in caplog.records)

    stopping_thread = recover_at_start(scan, ctx.stopping, wait_s=600, retry_s=0.05)
    assert stopping_thread is not None
    ctx.stopping.set()
    stopping_thread.join(30)
    assert not stopping_thread.is_alive()

    upgrade(settings.database_url)  # ready: the scan runs at once, no thread
    assert recover_at_start(scan, ctx.stopping, wait_s=600, retry_s=0.05) is None
    assert sent == []
