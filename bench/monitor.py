"""Shift-monitoring benchmark: drift detection and label-free accuracy estimation of
``service/monitor`` on the shift benchmark's tasks, through the real API and worker.

For each task (``robust_clip_offline.tasks``: its ID validation, ID test and OOD splits, built
larger than the robustness benchmark's so a window of 1024 has 1024 distinct images):

1. a zero-shot job on the offline backbone through ``POST /finetune``; the worker registers
   the version and computes its monitoring profile on the validation split (an evaluation of
   kind ``profile``), as for any version;
2. every image of ID test and of each OOD split through ``POST /predict`` once, monitored:
   the serving path writes each image's statistics (``monitor_images``), read back here by
   the sha256 ``/predict`` answered; the top-10 probabilities are kept for the baselines;
3. windows of 64, 256 and 1024 images drawn (without replacement within a window) from ID
   test, from each OOD split, and as mixtures (10%, 25%, 50% OOD), each judged by
   ``models.monitoring.judge_window``, the function the service runs when a window closes;
4. the same windows and features through alibi-detect's ``MMDDrift`` (PyTorch backend, on the
   same 16-dimensional projected embeddings and the same 500 reference points) and NannyML's
   CBPE (on the same served probabilities, calibrated on the same validation split), in a
   separate virtual environment (``--baselines-python``): alibi-detect 0.13 pins numpy < 2,
   which the project's environment cannot take;
5. ``/predict`` throughput with ``RCS_MONITOR`` off and on, alternating, one API process each.

Figures: drift AUROC (ID windows against each OOD split's windows, and against mixtures), the
false-alarm rate on ID windows at the default threshold (p < 0.01), the estimated-accuracy
mean absolute error against each window's true top-1, each with a 95% bootstrap interval.

    .venv/bin/python -m bench.monitor --out bench/results/monitor-<date>
    .venv/bin/python -m bench.monitor --tasks animals-corruption --sizes 64,256 --out ...

Windows drawn from one finite test split overlap, so windows are not independent: the
intervals over windows are optimistic, and the false-alarm rate is measured on windows that
share images.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import secrets
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models.backbone import OFFLINE_BACKBONE
from models.monitoring import Profile, judge_window
from robust_clip_offline.tasks import TASKS, Sizes, build_task
from tools.demo import settings_for as demo_settings
from tools.processes import api_process, free_port, wait_ready, worker_process

SIZES = (64, 256, 1024)
MIXTURES = (0.1, 0.25, 0.5)
ALPHA = 0.01
# Images per class: train is not used (zero-shot), val is the reference, test and OOD the pools.
BENCH_SIZES = Sizes(train=10, val=50, test=120, ood=120)
BATCH = 32
BOOTSTRAPS = 1000


def settings_for(
    workdir: Path, api_key: str, monitor: bool = True, database: Path | None = None
) -> dict[str, str]:
    """The bench's API and worker: the demo's local settings (``tools.demo.settings_for``) on
    the CPU, with the monitor's. The pass over the pools closes no window (and prunes no
    image); the throughput runs (``database`` given) use the default window."""
    window = {} if database else {"RCS_MONITOR_WINDOW": "100000"}
    return {
        **demo_settings(workdir, api_key),
        "RCS_DATABASE_URL": f"sqlite:///{database or workdir / 'rcs.db'}",
        "RCS_DEVICE": "cpu",
        "RCS_TORCH_THREADS": os.environ.get("RCS_TORCH_THREADS", "2"),
        "RCS_MONITOR": "true" if monitor else "false",
        "RCS_MONITOR_KEEP_WINDOWS": "100000",
        "RCS_MONITOR_FLUSH_S": "0.5",
        **window,
    }


def check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url}: {response.text}")
    return response.json()


def read_manifest(manifest: Path) -> dict[str, list[tuple[Path, str]]]:
    splits: dict[str, list[tuple[Path, str]]] = {}
    with open(manifest, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            splits.setdefault(row["split"], []).append(
                (manifest.parent / row["path"], row["label"])
            )
    return splits


# --- through the API -----------------------------------------------------------------------


def zero_shot_version(client: httpx.Client, task: str, manifest: Path) -> str:
    dataset = check(client.post("/datasets", json={"name": task, "path": str(manifest)}))
    texts = json.loads((manifest.parent / "descriptions.json").read_text())
    descriptions = check(client.post("/descriptions", json={"name": task, "descriptions": texts}))
    body = {
        "model": OFFLINE_BACKBONE,
        "dataset": dataset["id"],
        "descriptions": descriptions["id"],
        "method": {"type": "zeroshot"},
        "registered_model_name": f"{task}-zeroshot",
        "splits": {"validation": "val", "ood": []},
        "seed": 0,
    }
    job = check(client.post("/finetune", json=body))
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = check(client.get(f"/jobs/{job['id']}"))
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['id']} {job['status']}: {job['error']}")
    ref = str(job["fine_tuned_model"])
    name, version = ref.split("/")
    while (answer := client.get(f"/models/{name}/versions/{version}/monitor")).status_code == 409:
        time.sleep(2)  # the profile evaluation the worker runs after registration
    check(answer)
    return ref


def predict_all(
    client: httpx.Client, ref: str, images: Sequence[tuple[Path, str]], classes: list[str]
) -> dict[str, Any]:
    """Every image once through /predict (monitored): sha256, full probabilities, labels."""
    shas, probs, labels = [], [], []
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        parts = [("files", (p.name, p.read_bytes(), "image/png")) for p, _ in chunk]
        form = {"model": ref, "top_k": str(len(classes))}
        answer = check(client.post("/predict", data=form, files=parts))
        for (_, label), item in zip(chunk, answer["data"], strict=True):
            row = np.zeros(len(classes))
            for entry in item["labels"]:
                row[classes.index(entry["label"])] = entry["probability"]
            shas.append(item["sha256"])
            probs.append(row)
            labels.append(classes.index(label))
    return {"sha256": shas, "probs": np.asarray(probs), "labels": np.asarray(labels)}


def stats_by_sha(db: Path, ref: str, shas: Sequence[str], timeout_s: float = 120) -> np.ndarray:
    """The statistics the serving path recorded for these images (waiting for its flush)."""
    name, version = ref.split("/")
    wanted = set(shas)
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT i.sha256, i.stats FROM monitor_images i JOIN model_versions v "
                "ON v.id = i.version_id WHERE v.name = ? AND v.version = ?",
                (name, int(version)),
            ).fetchall()
        found = {sha: json.loads(stats) for sha, stats in rows if sha in wanted}
        if len(found) == len(wanted):
            return np.asarray([found[s] for s in shas])
        if time.monotonic() > deadline:
            raise SystemExit(f"{len(wanted) - len(found)} images never reached monitor_images")
        time.sleep(0.5)


def load_profile(db: Path, ref: str) -> Profile:
    name, version = ref.split("/")
    with sqlite3.connect(db) as conn:
        [(text,)] = conn.execute(
            "SELECT p.profile FROM monitor_profiles p JOIN model_versions v "
            "ON v.id = p.version_id WHERE v.name = ? AND v.version = ?",
            (name, int(version)),
        ).fetchall()
    return Profile.from_json(json.loads(text))


# --- windows ---------------------------------------------------------------------------------


def draw_windows(
    id_n: int, ood_n: int, size: int, share: float, count: int, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ID indices, OOD indices) per window: ``share`` of ``size`` from the OOD pool."""
    k = int(round(share * size))
    if size - k > id_n or k > ood_n:
        return []
    return [
        (rng.choice(id_n, size - k, replace=False), rng.choice(ood_n, k, replace=False))
        for _ in range(count)
    ]


def conditions(oods: Sequence[str]) -> list[tuple[str, str | None, float]]:
    out: list[tuple[str, str | None, float]] = [("id", None, 0.0)]
    for split in oods:
        out.append((split, split, 1.0))
        out += [(f"{split}@{int(share * 100)}%", split, share) for share in MIXTURES]
    return out


def window_counts(size: int, quick: bool) -> tuple[int, int]:
    """(ID windows, windows per other condition) at ``size``."""
    if quick:
        return (40, 10) if size <= 256 else (15, 5)
    return (100, 20) if size <= 256 else (40, 10)


def judge_all(
    task: str, profile: Profile, pools: dict[str, dict[str, Any]], sizes: Sequence[int], quick: bool
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    ident = pools["test"]
    records = []
    for size in sizes:
        id_count, other_count = window_counts(size, quick)
        for name, split, share in conditions([s for s in pools if s != "test"]):
            ood = pools[split] if split else ident
            count = id_count if split is None else other_count
            for i, (a, b) in enumerate(
                draw_windows(len(ident["labels"]), len(ood["labels"]), size, share, count, rng)
            ):
                stats = np.concatenate([ident["stats"][a], ood["stats"][b]])
                correct = np.concatenate([ident["correct"][a], ood["correct"][b]])
                started = time.perf_counter()
                result = judge_window(profile, stats, ALPHA, min_window=8, seed=i)
                records.append(
                    {
                        "task": task,
                        "size": size,
                        "condition": name,
                        "split": split,
                        "share": share,
                        "window": i,
                        "id_index": a.tolist(),
                        "ood_index": b.tolist(),
                        "true_top1": float(correct.mean()),
                        "drift_score": result["drift"]["score"],
                        "p_value": result["drift"]["p_value"],
                        "drifted": result["drift"]["drifted"],
                        "tests": {k: v["p_value"] for k, v in result["drift"]["tests"].items()},
                        "atc": result["accuracy"]["estimate"],
                        "atc_interval": result["accuracy"]["interval"],
                        "average_confidence": result["accuracy"]["average_confidence"],
                        "disagreement": result["disagreement"]["rate"],
                        "judge_s": time.perf_counter() - started,
                    }
                )
        print(f"   {task}: windows of {size} judged", flush=True)
    return records


# --- figures ---------------------------------------------------------------------------------


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    neg, pos = np.asarray(negatives), np.asarray(positives)
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def interval(values: Sequence[float], stat: Any, rng: np.random.Generator) -> list[float]:
    values = np.asarray(values)
    boots = [stat(values[rng.integers(0, len(values), len(values))]) for _ in range(BOOTSTRAPS)]
    return [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


def auroc_interval(
    neg: Sequence[float], pos: Sequence[float], rng: np.random.Generator
) -> list[float]:
    neg_a, pos_a = np.asarray(neg), np.asarray(pos)
    boots = [
        auroc(
            neg_a[rng.integers(0, len(neg_a), len(neg_a))],
            pos_a[rng.integers(0, len(pos_a), len(pos_a))],
        )
        for _ in range(200)
    ]
    return [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]


def summarise(
    records: list[dict[str, Any]], baselines: dict[str, Any] | None, split_top1: dict[str, Any]
) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {"drift": [], "false_alarms": [], "accuracy": []}
    keyed = {(r["task"], r["size"], r["condition"], r["window"]): r for r in records}
    if baselines:
        for b in baselines["windows"]:
            keyed[(b["task"], b["size"], b["condition"], b["window"])].update(b["baselines"])
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["size"]), []).append(r)
    for (task, size), rows in sorted(groups.items()):
        ids = [r for r in rows if r["condition"] == "id"]
        out["false_alarms"].append(
            {
                "task": task,
                "size": size,
                "windows": len(ids),
                "ours": float(np.mean([r["drifted"] for r in ids])),
                "ours_interval": interval([float(r["drifted"]) for r in ids], np.mean, rng),
                **_baseline_alarms(ids),
            }
        )
        for condition in sorted({r["condition"] for r in rows} - {"id"}):
            shifted = [r for r in rows if r["condition"] == condition]
            split = shifted[0]["split"]
            entry = {
                "task": task,
                "size": size,
                "condition": condition,
                "share": shifted[0]["share"],
                "id_top1": split_top1[task]["test"],
                "split_top1": split_top1[task][split],
                "ours": auroc([r["drift_score"] for r in ids], [r["drift_score"] for r in shifted]),
                "ours_interval": auroc_interval(
                    [r["drift_score"] for r in ids], [r["drift_score"] for r in shifted], rng
                ),
            }
            same_ids = [r for r in ids if "mmd_distance" in r]
            same_shifted = [r for r in shifted if "mmd_distance" in r]
            if same_ids and same_shifted:  # alibi-detect ran on a subset: both on it
                entry["alibi_mmd"] = auroc(
                    [r["mmd_distance"] for r in same_ids], [r["mmd_distance"] for r in same_shifted]
                )
                entry["ours_on_alibi_windows"] = auroc(
                    [r["drift_score"] for r in same_ids], [r["drift_score"] for r in same_shifted]
                )
            out["drift"].append(entry)
        out["accuracy"] += _errors(task, size, rows, rng)
    for size in sorted({r["size"] for r in records}):
        out["accuracy"] += _errors("all", size, [r for r in records if r["size"] == size], rng)
    return out


def _errors(
    task: str, size: int, rows: list[dict[str, Any]], rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Each estimator's mean absolute error over ``rows`` (and ATC's interval coverage)."""
    out = []
    for estimator in ("atc", "average_confidence", "cbpe"):
        if estimator not in rows[0]:
            continue
        errors = [abs(r[estimator] - r["true_top1"]) for r in rows]
        out.append(
            {
                "task": task,
                "size": size,
                "estimator": estimator,
                "windows": len(rows),
                "mae": float(np.mean(errors)),
                "mae_interval": interval(errors, np.mean, rng),
                "coverage": float(
                    np.mean(
                        [
                            r["atc_interval"][0] <= r["true_top1"] <= r["atc_interval"][1]
                            for r in rows
                        ]
                    )
                )
                if estimator == "atc"
                else None,
            }
        )
    return out


def _baseline_alarms(ids: list[dict[str, Any]]) -> dict[str, Any]:
    same = [r for r in ids if "mmd_p_value" in r]
    if not same:
        return {}
    return {
        "alibi_mmd": float(np.mean([r["mmd_p_value"] < ALPHA for r in same])),
        "alibi_windows": len(same),
        "ours_on_alibi_windows": float(np.mean([r["drifted"] for r in same])),
    }


# --- throughput ------------------------------------------------------------------------------


def throughput(
    workdir: Path, api_key: str, ref: str, images: Sequence[Path], seconds: float, rounds: int
) -> list[dict[str, Any]]:
    """Images/s of /predict (8 concurrent clients, one image a request) with the monitor off
    and on, alternating, an API process each, on the same database."""
    results = []
    payloads = [base64.b64encode(p.read_bytes()).decode() for p in images]
    database = fresh_monitor_copy(workdir)
    for round_ in range(rounds):
        for monitor in (False, True):
            settings = settings_for(workdir, api_key, monitor, database)
            port = free_port()
            api = api_process(settings, port, workdir / "logs" / f"api-throughput-{monitor}.log")
            api.start()
            try:
                base = f"http://127.0.0.1:{port}"
                wait_ready(base, api)
                rate = _drive(base, api_key, ref, payloads, seconds)
            finally:
                api.stop()
            results.append({"round": round_, "monitor": monitor, **rate})
            print(f"   monitor {'on ' if monitor else 'off'}: {rate['images_per_s']:.1f} images/s")
    return results


def fresh_monitor_copy(workdir: Path) -> Path:
    """The bench's database with the versions and profiles but no recorded traffic: the
    monitor then works as in production (windows of the default size close as they fill),
    not through the backlog of the pass over the pools."""
    import shutil

    target = workdir / "throughput.db"
    shutil.copy(workdir / "rcs.db", target)
    with sqlite3.connect(target) as conn:
        for table in ("monitor_images", "monitor_windows", "monitor_events"):
            conn.execute(f"DELETE FROM {table}")  # noqa: S608 - our own table names
    return target


def _drive(
    base: str, api_key: str, ref: str, payloads: list[str], seconds: float
) -> dict[str, Any]:
    import asyncio

    async def client_loop(
        client: httpx.AsyncClient, stop: float, counts: list[int], lat: list[float]
    ) -> None:
        i = 0
        while time.monotonic() < stop:
            body = {"model": ref, "images": [payloads[i % len(payloads)]], "top_k": 1}
            started = time.monotonic()
            response = await client.post("/predict", json=body)
            response.raise_for_status()
            lat.append(time.monotonic() - started)
            counts.append(1)
            i += 1

    async def run() -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {api_key}"}
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
            warm = {"model": ref, "images": payloads[:8], "top_k": 1}
            (await client.post("/predict", json=warm)).raise_for_status()
            counts: list[int] = []
            lat: list[float] = []
            started = time.monotonic()
            await asyncio.gather(
                *(client_loop(client, started + seconds, counts, lat) for _ in range(8))
            )
            elapsed = time.monotonic() - started
        return {
            "images": len(counts),
            "seconds": elapsed,
            "images_per_s": len(counts) / elapsed,
            "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * float(np.quantile(lat, 0.99)),
        }

    return asyncio.run(run())


# --- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.monitor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-monitor"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--quick", action="store_true", help="fewer windows per condition")
    parser.add_argument(
        "--baselines-python", default=None, help="a Python with alibi-detect and nannyml"
    )
    parser.add_argument("--throughput-s", type=float, default=20.0)
    parser.add_argument("--throughput-rounds", type=int, default=1)
    parser.add_argument(
        "--throughput-only",
        action="store_true",
        help="measure throughput again on --workdir's models, into --out's summary",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="recompute --out's figures from its windows.jsonl and baselines.json",
    )
    args = parser.parse_args(argv)
    if args.throughput_only:
        return throughput_again(args, argv)
    if args.report_only:
        return report_again(args.out)
    tasks = [t for t in args.tasks.split(",") if t]
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.monotonic()
    from robust_clip_offline.build import ensure_offline_backbone

    print(f"== the offline backbone: {ensure_offline_backbone()}", flush=True)
    workdir = args.workdir.resolve()
    api_key = "rcs_bench_" + secrets.token_urlsafe(24)
    settings = settings_for(workdir, api_key)
    db = workdir / "rcs.db"
    if db.exists():
        db.unlink()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = api_process(settings, port, workdir / "logs" / "api.log").start()
    worker = None
    records: list[dict[str, Any]] = []
    split_top1: dict[str, dict[str, float]] = {}
    arrays: dict[str, np.ndarray] = {}
    refs = {}
    try:
        wait_ready(base, api)
        worker = worker_process(settings, workdir / "logs" / "worker.log").start()
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=300) as client:
            for task in tasks:
                manifest = build_task(TASKS[task], BENCH_SIZES, workdir / "data")
                splits = read_manifest(manifest)
                t0 = time.monotonic()
                ref = refs[task] = zero_shot_version(client, task, manifest)
                profile = load_profile(db, ref)
                print(
                    f"== {task}: {ref} and its profile in {time.monotonic() - t0:.0f} s", flush=True
                )
                classes = list(profile.classes)
                pools = {}
                for split in ["test", *TASKS[task].ood_splits]:
                    t0 = time.monotonic()
                    got = predict_all(client, ref, splits[split], classes)
                    got["stats"] = stats_by_sha(db, ref, got["sha256"])
                    got["correct"] = got["stats"][:, 3] == got["labels"]
                    pools[split] = got
                    split_top1.setdefault(task, {})[split] = float(got["correct"].mean())
                    print(
                        f"   {split}: {len(got['labels'])} images in "
                        f"{time.monotonic() - t0:.0f} s, top-1 {split_top1[task][split]:.3f}",
                        flush=True,
                    )
                    for key in ("stats", "probs", "labels"):
                        arrays[f"{task}/{split}/{key}"] = got[key]
                reference = predict_all(client, ref, splits["val"], classes)
                arrays[f"{task}/val/probs"] = reference["probs"]
                arrays[f"{task}/val/labels"] = reference["labels"]
                arrays[f"{task}/reference"] = profile.reference
                arrays[f"{task}/bandwidth"] = np.asarray([profile.bandwidth])
                records += judge_all(task, profile, pools, sizes, args.quick)
            throughput_images = [p for p, _ in read_manifest(manifest)["test"][:64]]
            last_ref = refs[tasks[-1]]
    finally:
        if worker is not None:
            worker.stop()
        api.stop()
    print("== /predict throughput, monitor off and on", flush=True)
    rates = throughput(
        workdir, api_key, last_ref, throughput_images, args.throughput_s, args.throughput_rounds
    )
    np.savez_compressed(args.out / "features.npz", **arrays)
    windows_path = args.out / "windows.jsonl"
    with windows_path.open("w") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    baselines = None
    if args.baselines_python:
        print("== baselines (alibi-detect MMDDrift, NannyML CBPE)", flush=True)
        out = args.out / "baselines.json"
        subprocess.run(
            [args.baselines_python, "-m", "bench.monitor_baselines", str(args.out), str(out)],
            check=True,
            # NannyML sends usage statistics unless told not to.
            env={
                **os.environ,
                "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                "NML_DISABLE_USAGE_LOGGING": "1",
            },
        )
        baselines = json.loads(out.read_text())
    figures = summarise(records, baselines, split_top1)
    figures["throughput"] = rates
    figures["split_top1"] = split_top1
    figures["refs"] = refs
    figures["sizes"] = sizes
    figures["quick"] = args.quick
    figures["command"] = " ".join(
        ["python -m bench.monitor", *(argv if argv is not None else sys.argv[1:])]
    )
    figures["seconds"] = time.monotonic() - started
    if baselines:
        figures["baselines"] = {k: v for k, v in baselines.items() if k != "windows"}
    (args.out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(report(figures))
    (args.out / "tables.md").write_text(report(figures) + "\n")
    return 0


def report_again(out: Path) -> int:
    figures = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "windows.jsonl").open()]
    baselines_path = out / "baselines.json"
    baselines = json.loads(baselines_path.read_text()) if baselines_path.exists() else None
    figures.update(summarise(records, baselines, figures["split_top1"]))
    (out / "summary.json").write_text(json.dumps(figures, indent=2) + "\n")
    (out / "tables.md").write_text(report(figures) + "\n")
    print(report(figures))
    return 0


def throughput_again(args: argparse.Namespace, argv: list[str] | None) -> int:
    summary = args.out / "summary.json"
    figures = json.loads(summary.read_text())
    workdir = args.workdir.resolve()
    task = figures["refs"] and list(figures["refs"])[-1]
    manifest = build_task(TASKS[task], BENCH_SIZES, workdir / "data")
    images = [p for p, _ in read_manifest(manifest)["test"][:64]]
    api_key = "rcs_bench_" + secrets.token_urlsafe(24)
    print("== /predict throughput, monitor off and on", flush=True)
    figures["throughput"] = throughput(
        workdir, api_key, figures["refs"][task], images, args.throughput_s, args.throughput_rounds
    )
    command = " ".join(["python -m bench.monitor", *(argv if argv is not None else sys.argv[1:])])
    figures["throughput_command"] = command
    summary.write_text(json.dumps(figures, indent=2) + "\n")
    (args.out / "tables.md").write_text(report(figures) + "\n")
    print(report(figures))
    return 0


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(figures: dict[str, Any]) -> str:
    lines = ["Drift AUROC, ID windows against each condition (ours; alibi-detect MMDDrift)", ""]
    lines += [
        _row(
            "task",
            "size",
            "condition",
            "ID top-1",
            "its top-1",
            "ours",
            "95% interval",
            "ours on alibi's windows",
            "alibi MMD",
        ),
        _row(*["---"] * 9),
    ]
    for d in figures["drift"]:
        lo, hi = d["ours_interval"]
        alibi = f"{d['alibi_mmd']:.3f}" if "alibi_mmd" in d else "-"
        same = f"{d['ours_on_alibi_windows']:.3f}" if "alibi_mmd" in d else "-"
        lines.append(
            _row(
                d["task"],
                d["size"],
                d["condition"],
                f"{d['id_top1']:.3f}",
                f"{d['split_top1']:.3f}",
                f"{d['ours']:.3f}",
                f"{lo:.3f}-{hi:.3f}",
                same,
                alibi,
            )
        )
    lines += ["", "False alarms on ID windows at p < 0.01", ""]
    lines += [
        _row(
            "task",
            "size",
            "windows",
            "ours",
            "95% interval",
            "alibi windows",
            "ours there",
            "alibi MMD",
        ),
        _row(*["---"] * 8),
    ]
    for f in figures["false_alarms"]:
        lo, hi = f["ours_interval"]
        alibi = ["-"] * 3
        if "alibi_mmd" in f:
            there = f"{f['ours_on_alibi_windows']:.3f}"
            alibi = [str(f["alibi_windows"]), there, f"{f['alibi_mmd']:.3f}"]
        lines.append(
            _row(
                f["task"], f["size"], f["windows"], f"{f['ours']:.3f}", f"{lo:.3f}-{hi:.3f}", *alibi
            )
        )
    lines += ["", "Estimated accuracy: mean absolute error against each window's true top-1", ""]
    lines += [
        _row(
            "task", "size", "estimator", "windows", "MAE", "95% interval", "ATC interval coverage"
        ),
        _row(*["---"] * 7),
    ]
    for a in figures["accuracy"]:
        lo, hi = a["mae_interval"]
        cov = f"{a['coverage']:.2f}" if a["coverage"] is not None else "-"
        lines.append(
            _row(
                a["task"],
                a["size"],
                a["estimator"],
                a["windows"],
                f"{a['mae']:.4f}",
                f"{lo:.4f}-{hi:.4f}",
                cov,
            )
        )
    lines += ["", "/predict throughput (8 clients, one image a request)", ""]
    lines += [_row("round", "monitor", "images/s", "p50 ms", "p99 ms"), _row(*["---"] * 5)]
    for t in figures["throughput"]:
        lines.append(
            _row(
                t["round"],
                "on" if t["monitor"] else "off",
                f"{t['images_per_s']:.1f}",
                f"{t['p50_ms']:.1f}",
                f"{t['p99_ms']:.1f}",
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
