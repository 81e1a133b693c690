"""Upload and download times of the demo's artifacts, checkpoints and dataset through the
storage layer (``service.storage``) against moto's S3 server process on this machine.

The server is local (127.0.0.1, an in-memory store): the figures measure the client's path
(s3fs, hashing, tar, the cache's rename), not a network. On a real bucket add the transfer
time of the sizes printed at the bandwidth you have.

What is moved: the artifact and a training checkpoint of the demo's model (``make demo``'s
backbone, ``offline-lite0-minilm``, trained 2 DRM steps on the synthetic shapes), and the
shapes dataset as an upload stores it (one tar). Each repeat uses fresh keys and an empty
download cache, in one process, one torch thread.

    .venv/bin/python bench/storage.py                      # 7 repeats, results/storage-<date>/
    .venv/bin/python bench/storage.py --arch test-tiny-vit --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "offline"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def train_two_steps(arch: str, work: Path) -> tuple[Path, Path, Path]:
    """The artifact, the last checkpoint and the dataset of a 2-step DRM run of ``arch``."""
    import torch

    from models.config import RunConfig, from_dict
    from models.data.synthetic import write_shapes_dataset
    from models.pipeline import finetune
    from models.train import latest_checkpoint

    torch.set_num_threads(1)
    data = write_shapes_dataset(work / "shapes", per_class=8, size=32)
    cfg = from_dict(
        RunConfig,
        {
            "backbone": {"arch": arch},
            "data": {
                "path": str(data),
                "descriptions": str(data / "descriptions.json"),
                # Random shapes at 32 px: the guard would stop DRM; sizes are what count here.
                "allow_weak_descriptions": True,
            },
            "objective": {"name": "drm"},
            "head": {"templates": "single"},
            "train": {"device": "cpu", "max_steps": 2, "batch_size": 8, "checkpoint_every": 1},
            "wise": {"alphas": [0.0, 1.0]},
            "output_dir": str(work / "artifact"),
        },
    )
    result = finetune(cfg, checkpoint_dir=work / "checkpoints")
    checkpoint = latest_checkpoint(work / "checkpoints")
    assert checkpoint is not None
    return result.artifact.path, checkpoint, data


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def one_round(store: Any, sources: tuple[Path, Path, Path], scratch: Path) -> dict[str, float]:
    """Each operation once, on fresh keys and an empty cache: its seconds by name."""
    from models.artifacts import card_digest

    artifact, checkpoint, dataset = sources
    scratch.mkdir(parents=True)
    key, job = f"bench/{uuid.uuid4().hex[:8]}", f"job-{uuid.uuid4().hex[:8]}"
    files: dict[str, str] = {}
    uris: list[str] = []
    runs: dict[str, Callable[[], Any]] = {
        "artifact upload": lambda: store.put_folder(artifact, key),
        "artifact download": lambda: store.local_path(key, card_digest(artifact)),
        "checkpoint upload": lambda: files.update(
            store.put_files(checkpoint, f"{job}/{checkpoint.name}")
        ),
        "checkpoint download": lambda: store.get_files(
            f"{job}/{checkpoint.name}", files, scratch / "resumed"
        ),
        "dataset upload (tar)": lambda: uris.append(store.put_dataset(job, dataset, scratch)),
        "dataset download (untar)": lambda: store.dataset_folder(uris[-1]).__enter__(),
    }
    return {name: timed(run) for name, run in runs.items()}


def summary(values: list[float]) -> dict[str, Any]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    # 95 % interval of the mean (t quantiles for the repeat counts used here).
    t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}
    half = t.get(len(values), 1.96) * sd / len(values) ** 0.5
    return {
        "median_s": statistics.median(values),
        "mean_s": mean,
        "ci95_s": [mean - half, mean + half],
        "min_s": min(values),
        "max_s": max(values),
        "runs_s": values,
    }


def main() -> None:
    from models.backbone import OFFLINE_BACKBONE
    from service.storage import ArtifactStore
    from tools.s3_server import aws_env, moto_server, new_bucket

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=OFFLINE_BACKBONE)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or ROOT / "bench" / "results" / f"storage-{date.today().isoformat()}"
    out.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        artifact, checkpoint, dataset = train_two_steps(args.arch, tmp / "run")
        sizes = {
            "artifact": size_of(artifact),
            "checkpoint": size_of(checkpoint),
            "dataset": size_of(dataset),
        }
        with moto_server(tmp / "moto.log") as endpoint:
            os.environ.update(aws_env(endpoint))
            import s3fs

            bucket = new_bucket(s3fs.S3FileSystem(skip_instance_cache=True))
            url = f"s3://{bucket}/bench"
            times: dict[str, list[float]] = {}
            for repeat in range(args.repeats + 1):  # the first is a warm-up, not kept
                store = ArtifactStore(f"{url}/artifacts", tmp / f"cache-{repeat}", None, url)
                measured = one_round(store, (artifact, checkpoint, dataset), tmp / str(repeat))
                for name, elapsed in measured.items():
                    if repeat:
                        times.setdefault(name, []).append(elapsed)
    results = {
        "command": " ".join([".venv/bin/python", "bench/storage.py", *sys.argv[1:]]),
        "arch": args.arch,
        "repeats": args.repeats,
        "bytes": sizes,
        "server": "moto[server] 5.2.5 on 127.0.0.1 (in-memory), started by the script",
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": os.getloadavg(),
            "python": platform.python_version(),
        },
        "times": {name: summary(values) for name, values in times.items()},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'operation':<26}{'MB':>8}{'median s':>10}{'95% CI of mean':>22}")
    for name, row in results["times"].items():
        mb = sizes[name.split()[0]] / 1e6
        low, high = row["ci95_s"]
        print(f"{name:<26}{mb:>8.1f}{row['median_s']:>10.3f}{f'{low:.3f} to {high:.3f}':>22}")
    print(f"written to {out / 'results.json'}")


if __name__ == "__main__":
    main()
