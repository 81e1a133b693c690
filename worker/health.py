"""``python -m worker.health``: exit 0 if the worker's heartbeat file is fresh (container check)."""

from __future__ import annotations

import argparse
import sys
import time

from service.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.health")
    parser.add_argument("--max-age", type=float, default=60.0, help="seconds")
    args = parser.parse_args(argv)
    path = Settings().worker_heartbeat_file
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        print(f"no heartbeat file {path}", file=sys.stderr)
        return 1
    if age > args.max_age:
        print(f"heartbeat is {age:.0f}s old", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
