"""What ``RCS_PREDICT_ENGINE=auto`` chooses for each model on this machine, and what a load costs.

For each architecture: a registered-like artifact is written (``bench/serve.py``'s
``write_artifact``; random weights where the backbone has no offline copy), then loaded twice
through the server's model cache under ``auto``: first with no export on disk (the version is
exported, verified and timed), then with the export cached (timed again only). Prints the
cache's own log lines (thread count, engine, the timings they were chosen by) and the seconds
each load took; ``--json`` also writes them.

    .venv/bin/python bench/engine_choice.py offline-lite0-minilm ViT-B-32
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class Lines(logging.Handler):
    """Keeps the model cache's log lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def loads(arch: str, device: str) -> list[dict[str, Any]]:
    from bench.serve import write_artifact
    from service.predict.cache import Engine, ModelCache

    lines = Lines()
    logger = logging.getLogger("service.predict.cache")
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    out = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = write_artifact(arch, Path(tmp) / "artifact")
            for load in ("first (exports)", "second (export cached)"):
                lines.lines.clear()
                cache = ModelCache(1 << 40, device, Engine("auto", Path(tmp) / "onnx"))
                started = time.perf_counter()
                model = cache.get("bench", 1, lambda: folder)
                seconds = time.perf_counter() - started
                out.append(
                    {
                        "arch": arch,
                        "load": load,
                        "seconds": round(seconds, 2),
                        "engine": model.engine,
                        "log": list(lines.lines),
                    }
                )
    finally:
        logger.removeHandler(lines)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archs", nargs="+", help="architectures, as bench/serve.py --models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    results = []
    for arch in args.archs:
        for row in loads(arch, args.device):
            results.append(row)
            print(f"{arch}, {row['load']} load: {row['seconds']:.1f} s, {row['engine']}")
            for line in row["log"]:
                print(f"    {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
