"""A redis-server of a test's own, never the shared one: append-only, with a password, on a free
port, and restartable on the same port and file as a restarted production Redis would be."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.live import wait_for
from tools.processes import free_port

# The password of the tests' own redis-servers: a secret no log or job event may show.
REDIS_PASSWORD = f"redis-{secrets.token_hex(8)}"


class RedisServer:
    def __init__(self, folder: Path, password: str) -> None:
        self.folder, self.password, self.port = folder, password, free_port()
        self.popen: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)]
        args += ["--requirepass", self.password, "--maxmemory-policy", "noeviction"]
        args += ["--logfile", str(self.folder / "redis.log")]
        try:
            self.popen = subprocess.Popen(args)
        except FileNotFoundError:
            pytest.skip("redis-server is not installed")
        import redis

        client = redis.Redis(port=self.port, password=self.password)
        wait_for(lambda: _pings(client), 20, "redis-server to start")

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()  # SIGTERM: Redis writes its append-only file and exits
            self.popen.wait(20)


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False
