"""Run the distribution-shift benchmark: zero-shot, ce, flyp, drm (both WRM readings), WiSE-FT.

    python -m bench.shift                  # full: 3 tasks x 4 fine-tuning methods x 3 seeds
    python -m bench.shift --quick          # smoke test: 1 seed, fewer images and steps
    python -m bench.shift --long           # the same methods fine-tuned 10 epochs instead of 2
    python -m bench.shift --tune           # pick lr (and DRM's lambda) on ID validation only
    python -m bench.shift --tune lam       # lambda only (each DRM reading), at the stored lr
    python -m bench.shift --ablate --tasks fashion-spurious   # why DRM does (not) help: lambda,
                                           # p_c normalisation, per-step p_c, and what p_c says
                                           # about the images
    python -m bench.shift --arch ViT-B-16 --pretrained openai --device cuda   # real CLIP
    python -m bench.shift --descriptions SETS.json  # another description set per task
                                           # ({task: {class: [sentences]}}); compare two sets'
                                           # runs with python -m bench.shift.descriptions

Every run goes through ``models.pipeline.finetune``, the same code path as the CLI and the
service, on datasets written as ordinary manifests (``robust_clip_offline.tasks``). Results go to
``--out`` (default ``runs/bench-shift``): ``results.json`` (every run, every alpha, every split
and head, with per-image records: ``bench.shift.records``), ``results.json.gz`` (the same,
compact and compressed: the file to commit), ``results.md`` (mean and standard deviation over
seeds) and ``effective_robustness.png``. ``--fine-alphas`` evaluates WiSE-FT on a 0.05 grid;
``python -m bench.shift.rules`` studies the alpha rules and heads on the records. Finished
runs are journaled in ``runs.jsonl`` there: run the same command again after an interruption
and it picks up where it stopped.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import platform
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.shift import descriptions as description_sets
from bench.shift import records, report
from bench.shift.diagnose import core_prior_report
from bench.shift.plan import (
    ABLATIONS,
    FINE_ALPHAS,
    FULL_ALPHAS,
    HEADS,
    HPARAMS_FILE,
    LAMBDA_GRID,
    LONG_EPOCHS,
    METHODS,
    QUICK_ALPHAS,
    Plan,
    backbone_digest,
    backbone_key,
    hparams_for,
    load_hparams,
    run_config,
)
from models.backbone import OFFLINE_BACKBONE
from models.json_values import stable_hash
from models.pipeline import finetune, versions
from robust_clip_offline.tasks import FORMAT as TASK_FORMAT
from robust_clip_offline.tasks import FULL, QUICK, TASKS, Task, build_task

# Every finished run is appended here (in --out) and reused by a later invocation.
JOURNAL = "runs.jsonl"
# Part of every run's key: bump it when a code change makes finished runs' figures stale, so a
# journal written before is not reused (2: class heads encoded with the text tower in eval mode;
RUN_FORMAT = 3
# 3: per-image records of every alpha, split and head (bench.shift.records); nll, true_prob and
# ece in the curve's metrics.
TUNE_LRS = (1e-5, 3e-5, 1e-4)
TUNE_LAMS = LAMBDA_GRID
# lr is tuned on this method and used by all (as papers compare methods at one lr per task);
# lambda is tuned at that lr for each DRM reading on its own (the readings' WRM terms differ
# in scale: a weighted contrastive loss against a cross-entropy to a sharp target).
TUNE_LR_METHOD = "flyp"
TUNE_LAM_METHODS = ("drm-weight", "drm-soft")


log = logging.getLogger("bench.shift")


def compact(metrics: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """{split: {head: {top1, macro_f1, worst_group_acc, nll, true_prob, ece}}}: what the report
    and the rule study need (the per-image records are kept apart: bench.shift.records)."""
    keep = ("top1", "macro_f1", "worst_group_acc", "nll", "true_prob", "ece", "n")
    return {
        split: {
            head: {k: _rounded(by_head[head].get(k)) for k in keep}
            for head in HEADS
            if head in by_head
        }
        for split, by_head in metrics.items()
    }


def _rounded(value: Any) -> Any:
    """Floats to 6 decimals (a top-1 on 10,000 images moves by 1e-4): a third of the bytes."""
    return round(value, 6) if isinstance(value, float) else value


def run_one(
    plan: Plan,
    task: Task,
    manifest: Path,
    method: str,
    seed: int,
    hp: Mapping[str, Any],
    tuning: bool = False,
) -> dict[str, Any]:
    """One fine-tuning run (or the zero-shot evaluation) and its WiSE-FT curve.

    ``tuning`` runs evaluate the fine-tuned model alone (alpha 1) and never the OOD splits.
    """
    output_dir = plan.out / "artifacts" / f"{task.name}-{method}-s{seed}"
    alphas = (1.0,) if tuning else None
    cfg = run_config(
        plan,
        task,
        manifest,
        method,
        seed,
        output_dir,
        hp,
        alphas,
        ood=not tuning,
        descriptions=descriptions_path(plan, task),
    )
    started = time.monotonic()
    result = finetune(cfg, note=log.debug, record_images=not tuning)
    wall = time.monotonic() - started
    card = result.card
    curve, images = records.split_images(card["wise"]["curve"])
    extra: dict[str, Any] = {}
    if images is not None:
        extra["images"] = images
    diagnostics = card.get("description_diagnostics")
    if diagnostics is not None:
        extra["description_diagnostics"] = diagnostics
    shutil.rmtree(output_dir, ignore_errors=True)  # ~100s of MB each; the numbers are kept
    training = card.get("training") or {}
    run: dict[str, Any] = {
        "task": task.name,
        "method": method,
        "seed": seed,
        "hparams": dict(hp),
        "selected_alpha": card["wise"]["selected_alpha"],
        "curve": [{"alpha": p["alpha"], "metrics": compact(p["metrics"])} for p in curve],
        "steps": training.get("steps"),
        # The last step's loss terms (for DRM: erm, wrm and the mean p_c of the true class).
        "final_losses": training.get("final_losses"),
        "wall_s": round(wall, 1),
        **extra,
    }
    if images is not None:
        # What bench.shift.descriptions compares: the served head at the selected alpha and 1.
        run["per_image"] = records.served_hits(run)
    return run


def descriptions_path(plan: Plan, task: Task) -> Path | None:
    """The task's set from --descriptions, written once into --out (None: the task's own)."""
    if plan.descriptions is None:
        return None
    path = plan.out / "descriptions" / f"{task.name}.json"
    text = json.dumps(plan.descriptions[task.name], indent=2) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


def run_key(plan: Plan, task: str, method: str, seed: int, hp: Mapping[str, Any]) -> str:
    """What a run's result depends on: a finished run with the same key is not run again."""
    what = {
        "task": task,
        "method": method,
        "seed": seed,
        "hparams": dict(hp),
        "sizes": asdict(plan.sizes),
        "alphas": list(plan.alphas),
        "backbone": backbone_key(plan.arch, plan.pretrained),
        "task_format": TASK_FORMAT,
        "run_format": RUN_FORMAT,
    }
    # Keys of runs with the hand-written sets stay as they were.
    if plan.descriptions is not None:
        what["descriptions"] = description_sets.set_digest(plan.descriptions[task])
    return stable_hash(what)[:16]


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Finished runs (one JSON object per line); a line cut off by a kill is ignored."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def execute(plan: Plan) -> dict[str, Any]:
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    manifests = {}
    for task in plan.tasks:
        t0 = time.monotonic()
        manifests[task.name] = build_task(task, plan.sizes, plan.data_root)
        log.info("task %s: data ready in %.0f s (%s)", task.name, time.monotonic() - t0, task.shift)
    journal = plan.out / JOURNAL
    weights = backbone_digest(plan.arch)
    done = {r["key"]: r for r in read_journal(journal)}
    others = sorted({r["backbone_digest"] for r in done.values() if r.get("backbone_digest")})
    if weights is not None and others and others != [weights]:
        raise SystemExit(
            f"{journal} holds runs of backbone weights {', '.join(others)}, and "
            f"{plan.arch} now has weights {weights} (a rebuilt backbone need not be the same): "
            "runs of the two are not paired; move the journal away or use another --out"
        )
    for task in plan.tasks:
        manifest = manifests[task.name]
        # Zero-shot does not depend on the seed: evaluated once. Seed-major order, so a run cut
        # short has whole seeds of every method.
        jobs = [("zeroshot", plan.seeds[0])] if plan.zeroshot else []
        jobs += [(m, s) for s in plan.seeds for m in plan.methods]
        for method, seed in jobs:
            hp = hparams_for(plan, task.name, method)
            key = run_key(plan, task.name, method, seed, hp)
            if key in done:
                run = done[key]
                log.info("reused from %s: %s", journal, report.run_line(run))
            else:
                run = {
                    "key": key,
                    "backbone_digest": weights,
                    **run_one(plan, task, manifest, method, seed, hp),
                }
                with open(journal, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(run) + "\n")
                log.info("%s", report.run_line(run))
            runs.append(run)
    return {
        "format": "robust-clip-bench-shift/1",
        "plan": {
            "tasks": {
                t.name: {"shift": t.shift, "ood_splits": list(t.ood_splits)} for t in plan.tasks
            },
            "methods": ["zeroshot", *plan.methods] if plan.zeroshot else list(plan.methods),
            "seeds": list(plan.seeds),
            "sizes": asdict(plan.sizes),
            "alphas": list(plan.alphas),
            "backbone": backbone_key(plan.arch, plan.pretrained),
            "backbone_digest": weights,
            "device": plan.device,
            "quick": plan.quick,
            "selection": "WiSE-FT alpha: on ID validation top-1 of the dual head, by two rules "
            "(tolerance: smallest alpha within one binomial standard error of the best; "
            "best_id_val: the best); hyperparameters: bench/shift/hparams.json, tuned on ID "
            "validation only",
            "epochs": plan.epochs,
            # None: each task's hand-written descriptions.json.
            "descriptions": None
            if plan.descriptions is None
            else {
                "file": str(plan.descriptions_file),
                "sets": {
                    t.name: description_sets.set_digest(plan.descriptions[t.name])
                    for t in plan.tasks
                },
            },
            "per_image": plan.per_image,
        },
        "runs": runs,
        "wall_s": round(time.monotonic() - started, 1),
        "machine": {
            "platform": platform.platform(),
            "cpus": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---------------------------------------------------------------------------------------------
# Tuning on ID validation


def tune(plan: Plan, what: str = "all") -> dict[str, Any]:
    """lr on flyp, then lambda per DRM reading at that lr, per task, on ID val of the first seed.

    ``what="lam"`` keeps each task's stored lr and tunes lambda only.

    The criterion is the fine-tuned model's (alpha 1) ID-validation top-1 with the dual head;
    tuning runs do not even evaluate the OOD splits. Ties go to the smaller lr or lambda (the
    smaller move away from the zero-shot model).
    """
    seed = plan.seeds[0]
    chosen: dict[str, Any] = {}
    trials: list[dict[str, Any]] = []
    for task in plan.tasks:
        manifest = build_task(task, plan.sizes, plan.data_root)

        def trial(
            method: str, hp: dict[str, Any], task: Task = task, manifest: Path = manifest
        ) -> float:
            run = run_one(plan, task, manifest, method, seed, hp, tuning=True)
            trials.append(run)
            log.info("tune %s", report.run_line(run))
            return report.val_top1(run, alpha=1.0)

        base = hparams_for(plan, task.name, TUNE_LR_METHOD)
        if what == "lam":
            lr = base["lr"]
        else:
            scores = {lr: trial(TUNE_LR_METHOD, {**base, "lr": lr}) for lr in TUNE_LRS}
            lr = max(TUNE_LRS, key=lambda v: (scores[v], -v))
        chosen[task.name] = {
            method: {"lr": lr} for method in METHODS if METHODS[method]["name"] != "drm"
        }
        for method in TUNE_LAM_METHODS:
            base = {**hparams_for(plan, task.name, method), "lr": lr}
            scores = {lam: trial(method, {**base, "lam": lam}) for lam in TUNE_LAMS}
            lam = max(TUNE_LAMS, key=lambda v: (scores[v], -v))
            chosen[task.name][method] = {"lr": lr, "lam": lam}
    return {"chosen": chosen, "trials": trials, "seed": seed}


# ---------------------------------------------------------------------------------------------
# Command line


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.shift", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, fewer images, 1 epoch, 3 alphas")
    p.add_argument(
        "--long",
        action="store_true",
        help=f"fine-tune {LONG_EPOCHS} epochs instead of the tuned 2 (default out "
        "runs/bench-shift-long)",
    )
    p.add_argument(
        "--tune",
        nargs="?",
        const="all",
        choices=("all", "lam"),
        help="tune lr and lambda (or with 'lam' lambda only, at the stored lr) on ID val; "
        "write --hparams",
    )
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {list(TASKS)}")
    p.add_argument(
        "--ablate",
        action="store_true",
        help="analysis runs (default out runs/bench-shift-ablation): DRM's lambda, p_c's "
        "normalisation and per-step p_c (the --methods default becomes the ablation variants), "
        "and p_c diagnostics",
    )
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from {list(METHODS)} (default: all of them), or with --ablate "
        f"from {list(ABLATIONS)}",
    )
    p.add_argument("--seeds", default=None, help="comma-separated (default 0,1,2; quick: 0)")
    p.add_argument("--arch", default=OFFLINE_BACKBONE, help="open_clip architecture or artifact")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, type=Path, help="default runs/bench-shift")
    p.add_argument("--data-root", default="runs/bench-shift-data", type=Path)
    p.add_argument("--hparams", default=HPARAMS_FILE, type=Path, help="tuned hyperparameters")
    p.add_argument(
        "--descriptions",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON {task: {class: [sentences]}}: concept descriptions in place of each task's "
        "hand-written set (recorded in results.json's plan; implies --per-image)",
    )
    p.add_argument(
        "--per-image",
        action="store_true",
        help="accepted for recorded commands: every run now keeps per-image records of every "
        "alpha, split and head (bench/shift/records.py)",
    )
    p.add_argument(
        "--fine-alphas",
        action="store_true",
        help="WiSE-FT alphas in 0.05 steps (21 evaluation passes instead of 5; the 0.25 grid "
        "lies on it, so the rule study reads both grids from these runs)",
    )
    p.add_argument(
        "--no-zeroshot",
        action="store_true",
        help="skip the zero-shot evaluation (when another invocation of the same group does it)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--report",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="write results.md and the plot from these results.json files (merged) into --out; "
        "runs nothing",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _names(text: str, known: Mapping[str, Any], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what} {unknown or text!r}; known: {', '.join(known)}")
    return names


def make_plan(args: argparse.Namespace) -> Plan:
    seeds: tuple[int, ...]
    if args.seeds is None:
        seeds = (0,) if args.quick else (0, 1, 2)
    else:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(",") if s.strip())
        except ValueError:
            raise SystemExit(
                f"--seeds must be comma-separated integers, got {args.seeds!r}"
            ) from None
    known = {**METHODS, **ABLATIONS} if args.ablate else METHODS
    methods = args.methods or ",".join(ABLATIONS if args.ablate else METHODS)
    default_out = "runs/bench-shift-long" if args.long else "runs/bench-shift"
    out = args.out or Path("runs/bench-shift-ablation" if args.ablate else default_out)
    tasks = tuple(TASKS[n] for n in _names(args.tasks, TASKS, "task"))
    sets = None
    if args.descriptions is not None:
        classes = {t.name: list(t.descriptions) for t in tasks}
        sets = description_sets.load_sets(args.descriptions, classes)
    return Plan(
        tasks=tasks,
        methods=_names(methods, known, "method"),
        seeds=seeds,
        sizes=QUICK if args.quick else FULL,
        alphas=FINE_ALPHAS if args.fine_alphas else QUICK_ALPHAS if args.quick else FULL_ALPHAS,
        arch=args.arch,
        pretrained=args.pretrained,
        device=args.device,
        quick=args.quick,
        out=out,
        data_root=args.data_root,
        hparams=load_hparams(args.hparams),
        zeroshot=not (args.ablate or args.no_zeroshot),
        epochs=LONG_EPOCHS if args.long else None,
        descriptions=sets,
        descriptions_file=args.descriptions,
        # RUN_FORMAT 3: every run keeps its per-image records (the served head's hits too).
        per_image=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.ablate and (args.tune or args.report):
        raise SystemExit(
            "--ablate runs its own analysis; it cannot be combined with --tune or --report"
        )
    if args.long and args.tune:
        raise SystemExit("--long runs with the values tuned at the default length; tune without it")
    plan = make_plan(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        plan.out.mkdir(parents=True, exist_ok=True)
        write_report(report.merge([records.load_results(p) for p in args.report]), plan.out)
        return 0
    if plan.arch == OFFLINE_BACKBONE:
        from robust_clip_offline.build import ensure_offline_backbone

        ensure_offline_backbone()  # built once (about 5 minutes on 2 cores), then cached
    plan.out.mkdir(parents=True, exist_ok=True)
    if args.tune:
        tuned = tune(plan, args.tune)
        store_hparams(args.hparams, backbone_key(plan.arch, plan.pretrained), tuned["chosen"])
        (plan.out / "tune.json").write_text(json.dumps(tuned, indent=2) + "\n")
        (plan.out / "tune.md").write_text(report.tune_markdown(tuned))
        print(report.tune_markdown(tuned))
        return 0
    if args.ablate:
        diagnostics = core_prior_report(plan)
        (plan.out / "core_prior.md").write_text(diagnostics)
        print(diagnostics)
    results = execute(plan)
    (plan.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    records.write_results(results, plan.out / "results.json.gz")
    write_report(results, plan.out)
    return 0


def write_report(results: dict[str, Any], out: Path) -> None:
    markdown = report.markdown(results)
    (out / "results.md").write_text(markdown)
    (out / "overview.md").write_text(report.overview(results))
    report.plot(results, out / "effective_robustness.png")
    print(markdown)
    print(f"wrote {out}/results.md, overview.md, effective_robustness.png")


def store_hparams(path: Path, key: str, chosen: Mapping[str, Any]) -> None:
    """Merge ``chosen`` into the file under ``key``; tuning runs per task may finish together."""
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = load_hparams(path)
        stored[key] = {**stored.get(key, {}), **chosen}
        path.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    sys.exit(main())
