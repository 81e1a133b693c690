"""Is a description set accepted before any run? The product's rule, on each task's ID
training images (``models.diagnostics``: the frozen concept head within 3 points of the default
head, and on ``fashion-spurious`` as right on background-aligned as on background-conflicting
images), for a set and, beside it on the same images, each task's hand-written set.

    python -m bench.shift.accept --descriptions bench/shift/descriptions/v2.json \\
        --out bench/results/descriptions-v2

Writes ``accept.json`` (both sets' full diagnostics per task) and ``accept.md`` (the table),
and exits 1 when a task's set is not accepted. It reads the training split only: no validation,
test or OOD image is looked at, so a set may be revised on what it says.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.shift.descriptions import set_digest
from bench.shift.plan import Plan, hparams_for, run_config
from bench.shift.run import descriptions_path, make_plan, parse
from models.diagnostics import description_diagnostics
from models.pipeline import build_classifier, frozen_head_probs, prepare_data
from robust_clip_offline.tasks import Task, build_task


def diagnose_task(plan: Plan, task: Task) -> dict[str, Any]:
    """The set's and the hand-written set's diagnostics on the task's training images."""
    manifest = build_task(task, plan.sizes, plan.data_root)
    hp = hparams_for(plan, task.name, "zeroshot")
    with tempfile.TemporaryDirectory() as tmp:
        own = descriptions_path(plan, task)
        cfg = run_config(
            plan, task, manifest, "zeroshot", plan.seeds[0], Path(tmp), hp, None, False, own
        )
        ds, descriptions = prepare_data(cfg)
        hand = json.loads(manifest.with_name("descriptions.json").read_text())
        classifier = build_classifier(cfg, ds.classnames, descriptions)
        train = ds.split(cfg.data.train_split)
        heads = frozen_head_probs(cfg, classifier, train, ds.classnames, hand)
    labels, groups = [s.label for s in train], [s.group for s in train]

    def of(concept: torch.Tensor) -> dict[str, Any]:
        return description_diagnostics(concept, labels, ds.classnames, heads["default"], groups)

    sentences = [len(texts) for texts in descriptions.values()]
    return {
        "task": task.name,
        "set_digest": set_digest(descriptions),
        "images": len(train),
        "sentences_per_class": [min(sentences), max(sentences)],
        "set": of(heads["concept"]),
        "hand_written": of(heads["other"]),
    }


def markdown(rows: Sequence[dict[str, Any]], source: str) -> str:
    lines = [
        f"Description sets on each task's ID training images (`{source}` against the "
        "hand-written set), read by the frozen offline backbone: concept-head top-1, its gap to "
        "the default head (the class names in the templates), the spread of the concept head's "
        "top-1 over groups where the images have groups, and the verdict (accepted: gap at least "
        "-3 points and the spread within 3 points or two standard errors; models.diagnostics).",
        "",
        "| task | images | sentences / class | default head | set | gap | group spread | "
        "accepted | hand-written | gap | group spread | accepted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, h = r["set"], r["hand_written"]
        spread = ["–" if x["group_spread"] is None else f"{x['group_spread']:.3f}" for x in (s, h)]
        lo, hi = r["sentences_per_class"]
        lines.append(
            f"| {r['task']} | {r['images']} | {lo}-{hi} | {s['default_top1']:.3f} "
            f"| {s['concept_top1']:.3f} | {s['gap']:+.3f} | {spread[0]} | "
            f"{'yes' if s['accepted'] else 'no'} | {h['concept_top1']:.3f} | {h['gap']:+.3f} "
            f"| {spread[1]} | {'yes' if h['accepted'] else 'no'} |"
        )
    for r in rows:
        for name, d in (("set", r["set"]), ("hand-written", r["hand_written"])):
            for reason in d["reasons"]:
                lines.append(f"\n- {r['task']}, {name}: {reason}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shift.accept", description=__doc__)
    p.add_argument("--descriptions", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tasks", default="digits-natural,fashion-spurious,animals-corruption")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-root", default="runs/bench-shift-data")
    p.add_argument("--arch", default=None, help="another backbone (the tests' tiny one)")
    p.add_argument("--quick", action="store_true", help="the quick benchmark's fewer images")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    forwarded = ["--tasks", args.tasks, "--descriptions", str(args.descriptions)]
    forwarded += ["--data-root", args.data_root]
    forwarded += ["--arch", args.arch] * (args.arch is not None) + ["--quick"] * args.quick
    with tempfile.TemporaryDirectory() as work:  # where each task's set is written for its run
        plan = make_plan(parse([*forwarded, "--out", work]))
        rows = [diagnose_task(plan, task) for task in plan.tasks]
    (args.out / "accept.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "accept.md").write_text(markdown(rows, str(args.descriptions)))
    print((args.out / "accept.md").read_text())
    return 0 if all(r["set"]["accepted"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
