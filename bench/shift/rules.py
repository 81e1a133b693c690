"""The WiSE-FT alpha rules and served heads, studied offline on recorded runs (issue 24).

    python -m bench.shift.rules RESULTS.json[.gz] [MORE ...] --out DIR [--resamples 2000]

Every run since RUN_FORMAT 3 keeps per-image records of every alpha, split and head
(``bench.shift.records``), so any rule of ``models.wiseft.select`` (the service's own code) can
be applied to a stored run and read at the point it picks, image by image. A *reading* is a
rule on a grid with a head choice:

- rules (``RULES``): best top-1, tolerance (the service default), fixed 0.5, alpha 1, best NLL,
  best mean true-class probability, and the paired noise-aware rule with each tie-break;
- grids: the 0.25 grid, and the 0.05 grid where the runs recorded it (``--fine-alphas``; the
  0.25 grid is read from the same runs);
- heads (``HEAD_CHOICES``): the dual head (beta 0.5, served today), the default head, or the
  one of the two the rule prefers on validation.

It writes ``rules.md`` and ``rules.json``: per reading the ID test and mean OOD top-1 per task
and method; against the reference reading (tolerance, 0.25 grid, dual head) the differences with
95% paired bootstrap intervals over seeds and images (``bench.shift.descriptions``); each
method against ``--baseline`` under the same reading (the issue's goal: DRM - FLYP in mean OOD at
equal ID); which reading the criterion prefers (``CRITERION``); and a held-out check: the
reading chosen on all tasks but one, read on the task left out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.shift import records
from bench.shift.descriptions import BOOTSTRAP, bootstrap_draws, interval
from bench.shift.plan import FINE_ALPHAS, FULL_ALPHAS, QUICK_ALPHAS
from bench.shift.report import merge
from models.config import WiseConfig
from models.errors import ConfigError
from models.wiseft import CurvePoint, select

RULES: dict[str, dict[str, Any]] = {
    "best-top1": {"selection": "best_id_val"},
    "tolerance": {"selection": "tolerance"},
    "fixed-0.5": {"selection": "fixed", "fixed_alpha": 0.5},
    "alpha-1": {"selection": "fixed", "fixed_alpha": 1.0},
    "best-nll": {"selection": "best_id_val", "metric": "nll"},
    "best-true-prob": {"selection": "best_id_val", "metric": "true_prob"},
    "paired-nll": {"selection": "paired", "tie_break": "nll"},
    "paired-true-prob": {"selection": "paired", "tie_break": "true_prob"},
    "paired-largest": {"selection": "paired", "tie_break": "largest"},
}
GRIDS: dict[str, tuple[float, ...]] = {
    "0.25": FULL_ALPHAS,
    "0.05": FINE_ALPHAS,
    # --quick runs' grid: read only where the 0.25 grid was not recorded.
    "0.5": QUICK_ALPHAS,
}
HEAD_CHOICES: dict[str, tuple[str, ...]] = {
    "dual": ("dual",),
    "default": ("default",),
    "dual-or-default": ("dual", "default"),
}
# The service's default today, on the benchmark's grid (the quick grid for --quick runs).
REFERENCE = "tolerance / 0.25 / dual"
QUICK_REFERENCE = "tolerance / 0.5 / dual"
LENGTH = " @"
# Equal ID: a reading is admissible when its mean ID test top-1 (over tasks and methods) lies
# within this of the highest among the readings; the criterion then takes the admissible
# reading with the highest mean OOD top-1 (OOD chooses among rules here, in the study, never
# inside a rule: rules see validation only).
EQUAL_ID = 0.005
CRITERION = (
    f"among the readings whose mean ID test top-1 over tasks and methods lies within "
    f"{EQUAL_ID} of the highest, the highest mean OOD top-1"
)


@dataclass(frozen=True)
class Reading:
    rule: str
    grid: str
    heads: str

    @property
    def name(self) -> str:
        return f"{self.rule} / {self.grid} / {self.heads}"

    def config(self) -> WiseConfig:
        return WiseConfig(
            alphas=GRIDS[self.grid], heads=HEAD_CHOICES[self.heads], **RULES[self.rule]
        )


# (task, method) -> seed -> {"alpha", "head", "hits": {split: [images]}}
Picks = dict[tuple[str, str], dict[int, dict[str, Any]]]


def readings(runs: Sequence[Mapping[str, Any]]) -> list[Reading]:
    """Every reading the runs support: the 0.05 grid only where every run recorded it."""
    grids = [g for g, alphas in GRIDS.items() if all(_has(r, alphas) for r in runs)]
    if "0.25" in grids:
        grids.remove("0.5")
    return [Reading(rule, g, h) for g in grids for rule in RULES for h in HEAD_CHOICES]


def _has(run: Mapping[str, Any], alphas: Sequence[float]) -> bool:
    recorded = run.get("images", {}).get("alphas", [])
    return all(any(abs(a - b) < 1e-9 for b in recorded) for a in alphas)


def fine_tuned(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The fine-tuned runs; SystemExit when one kept no per-image records."""
    runs = [r for r in results["runs"] if r["method"] != "zeroshot"]
    missing = [f"{r['task']}/{r['method']}/s{r['seed']}" for r in runs if "images" not in r]
    if missing:
        raise SystemExit(
            f"{len(missing)} run(s) kept no per-image records (run before RUN_FORMAT 3), e.g. "
            f"{', '.join(missing[:3])}: rerun them"
        )
    if not runs:
        raise SystemExit("no fine-tuned runs in the results")
    return runs


def pick(
    runs: Sequence[Mapping[str, Any]], reading: Reading, ood: Mapping[str, Sequence[str]]
) -> Picks:
    """Apply the reading to every run: the (alpha, head) it picks on validation and the
    per-image hits there on ID test and the task's OOD splits."""
    out: Picks = {}
    cfg = reading.config()
    for run in runs:
        choice = select(records.curve_points(run, cfg.alphas), cfg, split="val")
        hits = {
            s: records.hits_at(run, choice.alpha, s, choice.head)
            for s in ["test", *ood[run["task"]]]
        }
        out.setdefault((run["task"], run["method"]), {})[run["seed"]] = {
            "alpha": choice.alpha,
            "head": choice.head,
            "hits": hits,
        }
    return out


def _stack(
    by_seed: Mapping[int, Mapping[str, Any]], seeds: Sequence[int], splits: Sequence[str]
) -> dict[str, np.ndarray]:
    return {s: np.stack([by_seed[k]["hits"][s] for k in seeds]) for s in splits}


def figures(by_seed: Mapping[int, Mapping[str, Any]], ood: Sequence[str]) -> dict[str, Any]:
    """Mean over seeds of ID test and mean OOD top-1, and the picks."""
    seeds = sorted(by_seed)
    return {
        "seeds": seeds,
        "id": float(np.mean([by_seed[k]["hits"]["test"].mean() for k in seeds])),
        "ood": float(
            np.mean([np.mean([by_seed[k]["hits"][s].mean() for s in ood]) for k in seeds])
        ),
        "alphas": [by_seed[k]["alpha"] for k in seeds],
        "heads": [by_seed[k]["head"] for k in seeds],
    }


def difference(
    a: Mapping[int, Mapping[str, Any]],
    b: Mapping[int, Mapping[str, Any]],
    ood: Sequence[str],
    resamples: int,
) -> dict[str, tuple[float, np.ndarray]]:
    """a - b on ID test and mean OOD over the seeds both hold: point and bootstrap draws."""
    seeds = sorted(set(a) & set(b))
    out = {}
    for key, splits in (("id", ["test"]), ("ood", list(ood))):
        out[key] = bootstrap_draws(_stack(a, seeds, splits), _stack(b, seeds, splits), resamples)
    return out


def pooled(parts: Sequence[tuple[float, np.ndarray]]) -> tuple[float, float, float]:
    """The mean of several differences (tasks, methods) with the mean of their draws."""
    return interval(float(np.mean([p for p, _ in parts])), np.mean([d for _, d in parts], axis=0))


def study(
    results: Mapping[str, Any],
    baseline: str = "flyp",
    resamples: int = BOOTSTRAP,
    cards: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every reading on every run (see the module's docstring); ``cards`` ({name: model card})
    are curves the choice never sees, read only to check it (``check_on_cards``)."""
    runs = fine_tuned(results)
    ood = {t: info["ood_splits"] for t, info in results["plan"]["tasks"].items()}
    tasks = [t for t in ood if any(r["task"] == t for r in runs)]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    all_readings = readings(runs)
    picks = {rd.name: pick(runs, rd, ood) for rd in all_readings}
    reference = REFERENCE if REFERENCE in picks else QUICK_REFERENCE
    if reference not in picks:
        raise SystemExit(f"the reference reading {REFERENCE} cannot be read from these runs")
    ref = picks[reference]
    table: dict[str, Any] = {}
    for rd in all_readings:
        mine = picks[rd.name]
        entry: dict[str, Any] = {"cells": {}, "vs_reference": {}, "vs_baseline": {}}
        parts: dict[str, list[tuple[float, np.ndarray]]] = {"id": [], "ood": []}
        base_parts: dict[str, dict[str, list[tuple[float, np.ndarray]]]] = {}
        for task in tasks:
            for method in methods:
                key = (task, method)
                if key not in mine:
                    continue
                entry["cells"][f"{task}/{method}"] = figures(mine[key], ood[task])
                d = difference(mine[key], ref[key], ood[task], resamples)
                for k in ("id", "ood"):
                    parts[k].append(d[k])
                base = baseline_of(method, baseline)
                if method != base and (task, base) in mine:
                    d = difference(mine[key], mine[(task, base)], ood[task], resamples)
                    entry["vs_baseline"][f"{task}/{method}"] = {k: interval(*d[k]) for k in d}
                    for k in ("id", "ood"):
                        base_parts.setdefault(method, {"id": [], "ood": []})[k].append(d[k])
        entry["vs_reference"] = {k: pooled(parts[k]) for k in parts}
        entry["vs_baseline"].update(
            {
                f"mean over tasks/{m}": {k: pooled(v[k]) for k in v}
                for m, v in base_parts.items()
                if len(v["id"]) == len(tasks)
            }
        )
        cells = entry["cells"].values()
        entry["mean_id"] = float(np.mean([c["id"] for c in cells]))
        entry["mean_ood"] = float(np.mean([c["ood"] for c in cells]))
        table[rd.name] = entry
    chosen = choose({n: (e["mean_id"], e["mean_ood"]) for n, e in table.items()})
    return {
        "reference": reference,
        "baseline": baseline,
        "criterion": CRITERION,
        "tasks": tasks,
        "methods": methods,
        "resamples": resamples,
        "readings": table,
        "chosen": chosen,
        "held_out": held_out(table, tasks, methods, reference),
        "cards": check_on_cards(cards or {}, all_readings, chosen, reference),
    }


def load_card(path: Path) -> dict[str, Any]:
    """A model card with its WiSE-FT curve: an artifact's ``artifact.json`` (the demo's lie
    under its workdir's ``artifacts/``), a JSON object holding one under ``card``, or a
    registry version as the API returns it (its ``wise_ft``; OOD: the splits named ood*)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--cards {path}: not a readable JSON file ({exc})") from None
    card = data.get("card", data) if isinstance(data, dict) else None
    if isinstance(card, dict) and "wise" not in card and "wise_ft" in card:
        card = {**card, "wise": card["wise_ft"]}  # GET /models/{name}/versions/{v}
    if not isinstance(card, dict) or not (card.get("wise") or {}).get("curve"):
        raise SystemExit(f"--cards {path}: no model card with a WiSE-FT curve (wise.curve)")
    return card


def on_card(card: Mapping[str, Any], reading: Reading) -> dict[str, Any] | None:
    """What ``reading`` picks on a model card's curve (the card's aggregate metrics: ID test
    and mean OOD top-1 there), or None where the card cannot support it (its curve lacks the
    grid's alphas, or the rule needs per-image hits the card did not keep)."""
    cfg = reading.config()
    curve = [
        CurvePoint(float(p["alpha"]), p["metrics"])
        for p in card["wise"]["curve"]
        if any(abs(float(p["alpha"]) - a) < 1e-9 for a in cfg.alphas)
    ]
    if len(curve) != len(cfg.alphas):
        return None
    data = (card.get("config") or {}).get("data") or {}
    try:
        choice = select(curve, cfg, split=data.get("val_split", "val"))
    except ConfigError:
        return None
    metrics = next(p.metrics for p in curve if p.alpha == choice.alpha)
    oods = list(data.get("ood_splits") or [s for s in metrics if s.startswith("ood")])
    head = choice.head
    return {
        "alpha": choice.alpha,
        "head": head,
        "id": float(metrics["test"][head]["top1"]),
        "ood": statistics.fmean(float(metrics[s][head]["top1"]) for s in oods),
    }


def check_on_cards(
    cards: Mapping[str, Mapping[str, Any]],
    readings_: Sequence[Reading],
    chosen: str,
    reference: str,
) -> list[dict[str, Any]]:
    """The chosen reading and the reference on curves the choice never saw (e.g. the demo's
    versions), beside the reading the criterion would choose on each card alone."""
    rows = []
    for name, card in cards.items():
        there = {rd.name: on_card(card, rd) for rd in readings_}
        known = {n: (f["id"], f["ood"]) for n, f in there.items() if f is not None}
        rows.append(
            {
                "card": name,
                "chosen": there.get(chosen),
                "reference": there.get(reference),
                "best_there": choose(known) if known else None,
                "readings": there,
            }
        )
    return rows


def by_length(results: Mapping[str, Any]) -> dict[str, Any]:
    """Runs of a ``--long`` file are named ``method @10ep``: the same method at two lengths
    is two sets of curves (``report.merge`` keeps one run per task, method and seed), and
    each is compared with the baseline of its own length."""
    epochs = results["plan"].get("epochs")
    if epochs is None:
        return dict(results)
    runs = [
        r if r["method"] == "zeroshot" else {**r, "method": f"{r['method']}{LENGTH}{epochs}ep"}
        for r in results["runs"]
    ]
    return {**results, "runs": runs}


def baseline_of(method: str, baseline: str) -> str:
    """The baseline run at ``method``'s length."""
    return baseline + (method[method.index(LENGTH) :] if LENGTH in method else "")


def choose(scores: Mapping[str, tuple[float, float]]) -> str:
    """The reading ``CRITERION`` prefers, from {reading: (mean ID, mean OOD)} (ties: the
    earlier reading)."""
    top = max(i for i, _ in scores.values())
    admissible = [n for n, (i, _) in scores.items() if i >= top - EQUAL_ID - 1e-12]
    return max(admissible, key=lambda n: scores[n][1])


def held_out(
    table: Mapping[str, Any], tasks: Sequence[str], methods: Sequence[str], reference: str
) -> list[dict[str, Any]]:
    """Leave one task out: the reading chosen on the other tasks' runs, read on the task left
    out, beside the reference and the reading the criterion would choose there."""
    if len(tasks) < 2:
        return []

    def scores(on: Sequence[str]) -> dict[str, tuple[float, float]]:
        out = {}
        for name, entry in table.items():
            cells = [
                entry["cells"][f"{t}/{m}"]
                for t in on
                for m in methods
                if f"{t}/{m}" in entry["cells"]
            ]
            out[name] = (
                statistics.fmean(c["id"] for c in cells),
                statistics.fmean(c["ood"] for c in cells),
            )
        return out

    rows = []
    for task in tasks:
        chosen = choose(scores([t for t in tasks if t != task]))
        there = scores([task])
        rows.append(
            {
                "held_out": task,
                "chosen_on_others": chosen,
                "id": there[chosen][0],
                "ood": there[chosen][1],
                "reference": {"id": there[reference][0], "ood": there[reference][1]},
                "best_there": choose(there),
                "best_there_figures": {
                    "id": there[choose(there)][0],
                    "ood": there[choose(there)][1],
                },
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------
# The report


def _signed(d: Sequence[float]) -> str:
    point, low, high = d
    verdict = "" if low > 0 or high < 0 else " ~"
    return f"{point:+.3f} ({low:+.3f}, {high:+.3f}){verdict}"


def markdown(s: Mapping[str, Any], command: str) -> str:
    table = s["readings"]
    lines = [
        f"Made by `{command}`.",
        "",
        f"A reading is a rule / alpha grid / served head(s), applied per seed on ID validation "
        f"only (models.wiseft.select). ID: ID test top-1; OOD: mean top-1 over the task's OOD "
        f"splits; means over seeds, then over tasks and methods. Differences carry 95% paired "
        f"bootstrap intervals over seeds and images ({s['resamples']} resamples); `~`: the "
        f"interval covers 0, no reliable difference. Reference: `{s['reference']}` (the service's "
        f"default today). Criterion: {s['criterion']}; chosen: **`{s['chosen']}`**.",
        "",
        "| reading | mean ID | mean OOD | ID - reference | OOD - reference |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, e in table.items():
        bold = f"**{name}**" if name == s["chosen"] else name
        lines.append(
            f"| {bold} | {e['mean_id']:.3f} | {e['mean_ood']:.3f} | "
            f"{_signed(e['vs_reference']['id'])} | {_signed(e['vs_reference']['ood'])} |"
        )
    lines += [
        "",
        f"Each method against `{s['baseline']}` of the same length under the same reading, "
        "mean over tasks (`@10ep`: the `--long` runs):",
        "",
    ]
    others = [m for m in s["methods"] if m != baseline_of(m, s["baseline"])]
    header = ["reading", *(f"{m}: ID / OOD - {s['baseline']}" for m in others)]
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    for name, e in table.items():
        cells = [name]
        for m in others:
            d = e["vs_baseline"].get(f"mean over tasks/{m}")
            cells.append("-" if d is None else f"{_signed(d['id'])} / {_signed(d['ood'])}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per task and method (ID / OOD; alphas and heads picked per seed):", ""]
    keys = list(next(iter(table.values()))["cells"])
    lines += [
        "| reading | " + " | ".join(keys) + " |",
        "| " + " | ".join(["---"] * (len(keys) + 1)) + " |",
    ]
    for name, e in table.items():
        cells = [name]
        for k in keys:
            c = e["cells"].get(k)
            if c is None:
                cells.append("-")
                continue
            heads = "".join(
                "d" if h == "default" else "D" if h == "dual" else "c" for h in c["heads"]
            )
            alphas = ",".join(f"{a:g}" for a in c["alphas"])
            cells.append(f"{c['id']:.3f} / {c['ood']:.3f} (a {alphas}; {heads})")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Heads: D dual (beta 0.5), d default, per seed.")
    if s["held_out"]:
        lines += [
            "",
            "Held out: the reading the criterion chooses on the other tasks, read on the task "
            "left out (ID / OOD), beside the reference and the reading it would choose there:",
            "",
            "| task left out | chosen on the others | its ID / OOD | reference ID / OOD "
            "| best there |",
            "| --- | --- | --- | --- | --- |",
        ]
        for r in s["held_out"]:
            lines.append(
                f"| {r['held_out']} | {r['chosen_on_others']} | {r['id']:.3f} / {r['ood']:.3f} | "
                f"{r['reference']['id']:.3f} / {r['reference']['ood']:.3f} | {r['best_there']} "
                f"({r['best_there_figures']['id']:.3f} / {r['best_there_figures']['ood']:.3f}) |"
            )
    if s.get("cards"):
        lines += [
            "",
            "Checked on model cards the choice never saw (their aggregate metrics; `-`: the "
            "card's curve cannot support the reading):",
            "",
            "| card | chosen reading ID / OOD | reference ID / OOD | best there |",
            "| --- | --- | --- | --- |",
        ]
        for r in s["cards"]:
            cells = [r["card"]]
            for key in ("chosen", "reference"):
                f = r[key]
                cells.append(
                    "-"
                    if f is None
                    else f"{f['id']:.3f} / {f['ood']:.3f} (a {f['alpha']:g}, {f['head']})"
                )
            best = r["best_there"]
            there = r["readings"].get(best) if best else None
            cells.append(
                "-" if there is None else f"{best} ({there['id']:.3f} / {there['ood']:.3f})"
            )
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.shift.rules", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "results", nargs="+", type=Path, help="results.json or results.json.gz files (merged)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--baseline", default="flyp", help="the method the others are compared with")
    p.add_argument("--resamples", type=int, default=BOOTSTRAP)
    p.add_argument(
        "--cards",
        nargs="+",
        type=Path,
        default=[],
        metavar="CARD_JSON",
        help="model cards (artifact.json, or a registry version's JSON) to check the chosen "
        "reading on: e.g. the demo's versions; never used to choose",
    )
    args = p.parse_args(argv)
    if args.resamples < 100:
        raise SystemExit("--resamples must be at least 100 for a 95% interval")
    results = merge([by_length(records.load_results(f)) for f in args.results])
    cards = {str(f): load_card(f) for f in args.cards}
    result = study(results, args.baseline, args.resamples, cards)
    command = "python -m bench.shift.rules " + " ".join(
        [
            *(str(f) for f in args.results),
            "--baseline",
            args.baseline,
            "--resamples",
            str(args.resamples),
            *(["--cards", *(str(f) for f in args.cards)] if args.cards else []),
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rules.json").write_text(
        json.dumps({**result, "command": command}, indent=1) + "\n"
    )
    text = markdown(result, command)
    (args.out / "rules.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
