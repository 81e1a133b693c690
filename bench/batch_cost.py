"""What a forward pass costs per image at each batch size: why batching pays on CPU, and how much.

For one model (the artifact ``bench/serve.py`` writes for the name) it loops over back-to-back
passes of B preprocessed images for each batch size B, with ``--threads`` torch threads, and
reports images/s and CPU ms per image (the process's CPU time, so a loaded machine changes the
figures less than it changes wall time). A server's batcher decides the batch size; this is the
cost curve it moves along.

    .venv/bin/python bench/batch_cost.py
    .venv/bin/python bench/batch_cost.py --threads 2 --batches 1,8,32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(arch: str, batches: list[int], seconds: float) -> list[dict[str, Any]]:
    from bench.serve import REGISTERED, back_to_back, sample_images, write_artifact
    from service.predict.cache import load, warm_up
    from service.predict.service import ImageInput, preprocess

    rows = []
    with tempfile.TemporaryDirectory(prefix="rcs-batch-cost-") as tmp:
        folder = write_artifact(arch, Path(tmp) / "artifact")
        model = load(REGISTERED, 1, folder, "cpu")
        warm_up(model)
        images = [ImageInput(data, None, f"images[{i}]") for i, data in enumerate(sample_images())]
        one = preprocess(model, images, 40_000_000)
        for batch in batches:
            rows.append(back_to_back(model, one, batch, seconds, 3))
            print(
                f"batch {batch:3d}: {rows[-1]['images_per_s']:7.1f} images/s, "
                f"{rows[-1]['cpu_ms_per_image']:.2f} CPU ms per image",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="offline-lite0-minilm")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=2.0, help="least time per batch size")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    # Before torch loads: OpenMP sizes its pool from this, as the servers' processes do.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = measure(args.model, [int(b) for b in args.batches.split(",")], args.seconds)
    if args.json:
        result = {"model": args.model, "threads": args.threads, "rows": rows}
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
