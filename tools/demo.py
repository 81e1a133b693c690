"""``python -m tools.demo``: the README's main job through the real service, no servers needed.

SQLite for metadata, a folder for artifacts, Kombu's SQLite transport as the Celery broker, and
the real API (uvicorn) and worker (Celery, solo pool) processes. It registers a small shift
benchmark, stores its class descriptions, fine-tunes with DRM through ``POST /finetune`` (and a
zero-shot baseline the same way), follows the job's events, and classifies held-out
in-distribution and out-of-distribution images with ``POST /predict``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from models.offline.synthetic import write_shapes_dataset
from tools.processes import api_process, free_port, wait_ready, worker_process

BATCH = 32


def settings_for(workdir: Path, api_key: str) -> dict[str, str]:
    return {
        "RCS_ENV": "local",
        "RCS_DATABASE_URL": f"sqlite:///{workdir / 'rcs.db'}",
        "RCS_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.db'}",
        "RCS_ARTIFACTS_URL": str(workdir / "artifacts"),
        "RCS_WORK_DIR": str(workdir / "work"),
        "RCS_ALLOWED_DATASET_ROOTS": str(workdir / "data"),
        "RCS_BOOTSTRAP_API_KEY": api_key,
        "RCS_DEVICE": os.environ.get("RCS_DEVICE", "auto"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, default=Path("runs/service-demo"))
    parser.add_argument("--arch", default=os.environ.get("RCS_DEMO_ARCH", "test-tiny-vit"))
    parser.add_argument("--pretrained", default=os.environ.get("RCS_DEMO_PRETRAINED") or None)
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--keep-serving",
        action="store_true",
        help="after the run, keep the API, worker and dashboard up until Ctrl-C",
    )
    args = parser.parse_args(argv)

    workdir = args.workdir.resolve()
    data = workdir / "data" / "shapes"
    if not (data / "descriptions.json").is_file():
        print(f"== writing the synthetic shapes benchmark to {data}")
        write_shapes_dataset(data, per_class=args.per_class, size=32)
    api_key = "rcs_demo_" + secrets.token_urlsafe(24)
    settings = settings_for(workdir, api_key)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = api_process(settings, port, workdir / "logs" / "api.log").start()
    worker = None
    try:
        wait_ready(base, api)
        print(f"== API ready at {base} (docs: {base}/docs); starting the worker")
        print(f"== dashboard: {base}/ui/  (sign in with the demo's API key: {api_key})")
        worker = worker_process(settings, workdir / "logs" / "worker.log").start()
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=120) as client:
            run(client, args, data)
        if args.keep_serving:
            serve_until_interrupted(base, api_key)
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
    print(f"\nlogs: {workdir / 'logs'}")
    return 0


def serve_until_interrupted(base: str, api_key: str) -> None:
    print(f"\n== the dashboard stays up at {base}/ui/ (API key: {api_key}); Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\n== stopping")


def check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url}: {response.text}")
    return response.json()


def run(client: httpx.Client, args: argparse.Namespace, data: Path) -> None:
    dataset = check(client.post("/datasets", json={"name": "shapes", "path": str(data)}))
    print(
        f"== dataset {dataset['id']}: classes {dataset['classes']}, fingerprint "
        f"{dataset['fingerprint'][:12]}, splits "
        f"{ {k: sum(v.values()) for k, v in dataset['splits'].items()} }"
    )
    texts = json.loads((data / "descriptions.json").read_text())
    descriptions = check(
        client.post("/descriptions", json={"name": "shapes", "descriptions": texts})
    )
    print(f"== descriptions {descriptions['id']} (shapes v{descriptions['version']})")

    common = {
        "model": args.arch,
        "pretrained": args.pretrained,
        "dataset": dataset["id"],
        "descriptions": descriptions["id"],
        "head": {"templates": "single"},
        "seed": 0,
    }
    zeroshot = submit(
        client,
        {**common, "method": {"type": "zeroshot"}, "registered_model_name": "shapes-zeroshot"},
    )
    drm = submit(
        client,
        {
            **common,
            "method": {"type": "drm", "objective": {"wrm": "weight", "lam": 1.0}},
            "hyperparameters": {"n_epochs": args.epochs, "batch_size": 16, "learning_rate": 5e-4},
            "wise_ft": {"alphas": [0.0, 0.25, 0.5, 0.75, 1.0], "selection": "best_id_val"},
            "registered_model_name": "shapes-drm",
            "metadata": {"demo": "true"},
        },
    )
    zeroshot_ref = follow(client, zeroshot["id"])
    drm_ref = follow(client, drm["id"])
    card = check(client.get(f"/models/shapes-drm/versions/{drm_ref.split('/')[1]}"))
    print(
        f"== {drm_ref}: selected alpha {card['wise_ft']['selected_alpha']} "
        f"({card['wise_ft']['selection']}); dataset {card['dataset']['fingerprint'][:12]}"
    )
    report(client, data, {"zero-shot": zeroshot_ref, "DRM + WiSE-FT": drm_ref})


def submit(client: httpx.Client, body: dict[str, Any]) -> Any:
    key = f"demo-{body['registered_model_name']}-{time.time_ns()}"
    job = check(client.post("/finetune", json=body, headers={"Idempotency-Key": key}))
    print(
        f"== job {job['id']} ({job['method']['type']}) {job['status']}; "
        f"hyperparameters {job['hyperparameters']}"
    )
    return job


def follow(client: httpx.Client, job_id: str) -> str:
    """Print the job's events as server-sent events until it finishes; its registry reference."""
    with client.stream(
        "GET", f"/jobs/{job_id}/events", params={"stream": "true"}, timeout=None
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if "message" in event:
                    print(f"   [{job_id[-6:]}] {event['message']}")
    job = check(client.get(f"/jobs/{job_id}"))
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job_id} {job['status']}: {job['error']}")
    return str(job["fine_tuned_model"])


def accuracy(client: httpx.Client, ref: str, files: list[Path]) -> float:
    correct = 0
    for start in range(0, len(files), BATCH):
        chunk = files[start : start + BATCH]
        parts = [
            ("files", (f"{p.parent.name}/{p.name}", p.read_bytes(), "image/png")) for p in chunk
        ]
        result = check(client.post("/predict", data={"model": ref, "top_k": "1"}, files=parts))
        for path, prediction in zip(chunk, result["data"], strict=True):
            correct += prediction["labels"][0]["label"] == path.parent.name
    return correct / len(files)


def report(client: httpx.Client, data: Path, models: dict[str, str]) -> None:
    splits = {"ID (test)": "test", "OOD (ood_test)": "ood_test"}
    files = {name: sorted((data / split).glob("*/*.png")) for name, split in splits.items()}
    print("\n== accuracy through POST /predict (dual inference)")
    print(f"{'model':<16}{'reference':<22}" + "".join(f"{name:>16}" for name in splits))
    for label, ref in models.items():
        row = [accuracy(client, ref, files[name]) for name in splits]
        print(f"{label:<16}{ref:<22}" + "".join(f"{acc:>16.3f}" for acc in row))


if __name__ == "__main__":
    sys.exit(main())
