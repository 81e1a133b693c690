"""``python -m worker``: one Celery worker process on the training queue, solo pool."""

from __future__ import annotations

import argparse
import logging
import socket
import threading
import time
from pathlib import Path

import torch

from service.settings import settings_from_env
from service.storage import check_storage
from worker.app import create_celery, make_context


def start_heartbeat(path: Path, every_s: float = 10.0) -> None:
    """Touch ``path`` from a thread; the solo pool blocks the main thread while it trains."""

    def beat() -> None:
        while True:
            try:
                path.touch()
            except OSError:
                pass  # an unwritable path only makes the healthcheck fail, never the worker
            time.sleep(every_s)

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--queue", default=None, help="default: RCS_TRAINING_QUEUE")
    parser.add_argument("--name", default=f"trainer@{socket.gethostname()}")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    # Before logging is set up: a refusal is one line, without the storage client's own logs.
    settings = settings_from_env()
    check_storage(settings)
    logging.basicConfig(
        level=args.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    app = create_celery(make_context(settings))
    start_heartbeat(settings.worker_heartbeat_file)
    app.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={args.queue or settings.training_queue}",
            f"--hostname={args.name}",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
