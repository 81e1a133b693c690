"""The worker process does not import the web app (issue 23).

``python -m worker`` runs in a fresh interpreter up to the point where Celery would start
consuming; there ``sys.modules`` must hold no FastAPI and no Starlette. A worker that needs
the web framework pulls in, and may break with, code it never runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ("fastapi", "starlette")

# Everything ``main`` does before Celery takes over (settings, the database engine, the Celery
# app with its tasks, the heartbeat), then a report instead of consuming the queue.
START_WORKER = f"""
import sys
from celery import Celery

def report(self, argv=None):
    web = sorted(m for m in sys.modules if m.split(".")[0] in {WEB!r})
    print("web modules:", web)
    raise SystemExit(1 if web else 0)

Celery.worker_main = report
from worker.__main__ import main
main(["--queue", "import-check"])
"""


def test_the_worker_process_imports_no_fastapi(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RCS_DATABASE_URL": f"sqlite:///{tmp_path}/rcs.db",
        "RCS_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db",
        "RCS_WORKER_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    run = subprocess.run(
        [sys.executable, "-c", START_WORKER],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "web modules: []" in run.stdout
