"""``python -m models descriptions score|propose``: the service's scoring, offline.

Both score a pool of candidate descriptions on the run config's training split with its frozen
backbone (``models.description_scoring.score_dataset``, what a worker runs for
``POST /descriptions/score``); ``score`` prints every candidate's numbers and reasons,
``propose`` writes the proposed set as a descriptions file that ``data.descriptions`` takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from models.config import load_run_config
from models.data import load_descriptions, open_dataset
from models.description_scoring import ScoringRule, score_dataset, template_candidates
from models.errors import ConfigError


def add_parser(sub: Any) -> None:
    group = sub.add_parser(
        "descriptions", help="score candidate class descriptions and propose a set (offline)"
    )
    commands = group.add_subparsers(required=True, metavar="ACTION")
    for name, run, text in (
        ("score", cmd_score, "every candidate's scores and why dropped ones are dropped"),
        ("propose", cmd_propose, "write the proposed set as a descriptions file"),
    ):
        p = commands.add_parser(name, help=text)
        p.add_argument("--config", help="YAML run config: data.path, backbone, head")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
        p.add_argument("--candidates", help="JSON {class: [sentences]} (a descriptions file)")
        p.add_argument("--templates", action="store_true", help="add sentences naming each class")
        p.add_argument("--reference", help="accepted descriptions the other classes are met by")
        p.add_argument(
            "--rule", action="append", default=[], metavar="KEY=VALUE", help="e.g. max_per_class=3"
        )
        p.add_argument("--json", action="store_true", help="print the whole result as JSON")
        p.add_argument("--out", required=name == "propose", help="write the result JSON here")
        p.set_defaults(run=run)


def scored(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_run_config(args.config, args.overrides)
    pool: dict[str, list[str]] = {}
    if args.candidates:
        pool = {c: list(t) for c, t in load_descriptions(args.candidates).items()}
    if args.templates:
        classnames = open_dataset(cfg.data.path, within=cfg.data.within).classnames
        for name, texts in template_candidates(classnames).items():
            pool[name] = [*pool.get(name, []), *(t for t in texts if t not in pool.get(name, []))]
    if not pool:
        raise ConfigError("nothing to score: give --candidates FILE or --templates")
    reference = None
    if args.reference:
        reference = {c: list(t) for c, t in load_descriptions(args.reference).items()}
    return score_dataset(cfg, pool, reference=reference, rule=_rule(args.rule))


def _rule(pairs: list[str]) -> ScoringRule:
    known = {f.name: f.type for f in dataclasses.fields(ScoringRule)}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in known:
            raise ConfigError(f"--rule {pair!r}: expected KEY=VALUE with KEY in {list(known)}")
        values[key] = yaml.safe_load(raw)
    return ScoringRule(**values)


def cmd_score(args: argparse.Namespace) -> int:
    result = scored(args)
    _write(args, result)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name, entry in result["per_class"].items():
        base = entry["baseline"]
        flag = "  WEAK: no candidate passes" if entry["weak"] else ""
        print(f"{name}: baseline top-1 {base['top1']:.3f}, margin {base['margin']:+.3f}{flag}")
        for item in entry["candidates"]:
            mark = "keep" if item["kept"] else "drop"
            worst = item.get("worst_group_top1")
            group = "" if worst is None else f" worst-group {worst:.3f}"
            print(
                f"  {mark} top-1 {item['top1']:.3f} acc {item['accuracy']:.3f} "
                f"margin {item['margin']:+.3f}{group}  {item['text']}"
            )
            for reason in item["reasons"]:
                print(f"       - {reason}")
    print(_summary(result))
    return 0


def cmd_propose(args: argparse.Namespace) -> int:
    result = scored(args)
    Path(args.out).write_text(json.dumps(result["proposed"], indent=2) + "\n", encoding="utf-8")
    for name, entry in result["per_class"].items():
        dropped = [c for c in entry["candidates"] if not c["kept"]]
        print(f"{name}: keeps {len(entry['proposed'])}, drops {len(dropped)}")
        for item in dropped:
            print(f"  dropped {item['text']!r}: {'; '.join(item['reasons'])}")
    print(_summary(result))
    print(f"proposed descriptions: {args.out} (use it as data.descriptions)")
    return 0


def _write(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _summary(result: dict[str, Any]) -> str:
    weak = result["weak_classes"]
    seconds = result["seconds"]
    return (
        f"{result['candidates']} candidates on {result['images']} training images "
        f"({result['split']}): the proposed set's concept head gets "
        f"{result['proposed_concept_top1']:.1%}, the template baseline "
        f"{result['baseline_top1']:.1%}"
        + (f"; weak: {', '.join(weak)}" if weak else "")
        + f" ({seconds['images']:.1f} s embedding images, {seconds['scoring']:.1f} s scoring)"
    )
