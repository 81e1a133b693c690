"""`python -m service serve --workers 2` on a fresh PostgreSQL database: the migrations run once
before the processes start, both answer, and a key revoked through one is refused by every
process once the revoke is answered, although each had it in its lookup cache; each process
gets its share of the cores as torch threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from tests.live import postgres_database_or_skip
from tests.service.support import API_KEY
from tools.processes import Process, free_port, process_env, wait_ready


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_two_api_processes_share_a_fresh_database_and_a_revocation(tmp_path: Path) -> None:
    database_url, drop = postgres_database_or_skip()
    settings = {
        "RCS_ENV": "production",
        "RCS_DATABASE_URL": database_url,
        "RCS_BROKER_URL": "memory://",
        "RCS_ARTIFACTS_URL": str(tmp_path / "artifacts"),
        "RCS_WORK_DIR": str(tmp_path / "work"),
        "RCS_BOOTSTRAP_API_KEY": API_KEY,
        "RCS_DEVICE": "cpu",
        # Each process on a socket of its own (service/listen.py): the path uvicorn does not run.
        "RCS_API_REUSE_PORT": "true",
        "RCS_API_WORKERS": "2",
        "RCS_LOOKUP_CACHE_S": "3",
    }
    port = free_port()
    cmd = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    env = process_env(settings)
    env.pop("RCS_TORCH_THREADS", None)  # unset: each process gets its share of the cores
    api = Process("api", cmd, tmp_path / "api.log", env).start()
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {API_KEY}"}
    try:
        wait_ready(base, api, timeout=120)
        assert api.popen is not None
        workers = children(api.popen.pid)
        assert len(workers) >= 2  # uvicorn's two worker processes
        share = str(max(1, len(os.sched_getaffinity(0)) // 2))
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"RCS_TORCH_THREADS={share}".encode() in environ
        created = httpx.post(
            f"{base}/keys", json={"name": "k", "scopes": ["predict"]}, headers=admin
        )
        assert created.status_code == 201, created.text
        key = {"Authorization": f"Bearer {created.json()['key']}"}
        # Many connections, so that both processes answer and remember the key.
        with httpx.Client(base_url=base) as first, httpx.Client(base_url=base) as second:
            for client in [first, second] * 10:
                assert client.get("/me", headers=key).status_code == 200
        revoked = httpx.delete(f"{base}/keys/{created.json()['id']}", headers=admin, timeout=120)
        assert revoked.status_code == 200, revoked.text
        statuses = set()
        for _ in range(20):
            with httpx.Client(base_url=base) as client:  # a new connection each time
                statuses.add(client.get("/me", headers=key).status_code)
        assert statuses == {401}
    finally:
        api.stop(timeout=30)
        drop()
    assert "Traceback" not in (tmp_path / "api.log").read_text()
