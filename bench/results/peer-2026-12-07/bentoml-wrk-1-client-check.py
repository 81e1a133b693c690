"""BentoML under wrk at 1 client, on a fresh server with the test model (2026-12-07 04:46 UTC,
load average 3.1). Run from the repository root with PYTHONPATH=$PWD:$PWD/offline:

    .venv/bin/python bench/results/peer-2026-12-07/bentoml-wrk-1-client-check.py

It printed (generator, clients, p50 ms, images/s):
    wrk 1 5.0 192.0
    ours-gen 64 145.9 318.5
    wrk 1 5.7 163.6
    ours-gen 1 6.5 136.5
    wrk 1 5.7 159.2
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, "bench")
from bench import peer
from bench.serve import write_artifact

args = argparse.Namespace(
    device="cpu", max_batch=32, torch_threads=0, workers=1, jpeg_draft=False, image_size=256
)
with tempfile.TemporaryDirectory() as tmp:
    folder = write_artifact("test-tiny-vit", Path(tmp) / "artifact")
    with peer.running("bentoml", folder, Path(tmp) / "b", args) as (url, pid, key):
        import asyncio

        def show(name, c, r):
            print(name, c, round(r["p50_ms"], 1), round(r["images_per_s"], 1), flush=True)

        show("wrk", 1, peer.drive_wrk(url, "bentoml", "json", 1, 4, None, 256))
        show("ours-gen", 64, asyncio.run(peer.drive(url, "bentoml", "json", 64, 1024, None, 256)))
        show("wrk", 1, peer.drive_wrk(url, "bentoml", "json", 1, 4, None, 256))
        show("ours-gen", 1, asyncio.run(peer.drive(url, "bentoml", "json", 1, 200, None, 256)))
        show("wrk", 1, peer.drive_wrk(url, "bentoml", "json", 1, 4, None, 256))
