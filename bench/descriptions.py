"""Does the scoring rule drop misleading descriptions and keep the concept head up?

For each task (the shift benchmark's three, and the synthetic shapes of ``make demo-tiny``),
a pool per class mixes **good** sentences (the task's own hand-written core-feature
descriptions, and templates naming the class), **generic** ones ("an object.") and
**misleading** ones that describe the background or the image, not the object. The pool is
scored on the training images with the frozen backbone (``models.description_scoring``) and we
report, per task: which kinds were dropped, and the proposed set's concept-head top-1 on the
training images against the default head (the task's prompt templates), with a paired
bootstrap interval over images. Also the cost: seconds per 1,000 images embedded and per 100
candidates scored, with ``torch.set_num_threads`` threads.

    python -m bench.descriptions --out bench/results/descriptions-2026-12-07 \
        --tasks animals-corruption,digits-natural,fashion-spurious,shapes
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.backbone import DEFAULT_BACKBONE_CACHE, OFFLINE_BACKBONE
from models.config import load_run_config
from models.data import ImageDataset, load_descriptions, open_dataset
from models.description_scoring import score_candidates, template_candidates
from models.evaluation import image_features
from models.heads import encode_texts
from models.pipeline import build_classifier

GENERIC = ("an object.", "a photo.", "a picture of something.", "a thing.")
MISLEADING = (
    "a plain black background.",
    "a bright coloured background filling the image.",
    "a blurry, noisy, low quality image.",
    "a photo taken outdoors on green grass.",
    "a small image with a white border.",
)
SHIFT_TASKS = ("animals-corruption", "digits-natural", "fashion-spurious")
BOOTSTRAP = 2000


def pool_for(classnames: Sequence[str], good: dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """{class: {text: kind}}: good, generic, misleading."""
    named = template_candidates(classnames)
    pool: dict[str, dict[str, str]] = {}
    for c in classnames:
        kinds = {t: "good" for t in [*good.get(c, []), *named[c]]}
        kinds.update({t: "generic" for t in GENERIC})
        kinds.update({t: "misleading" for t in MISLEADING})
        pool[c] = kinds
    return pool


def dataset_for(name: str, root: Path) -> tuple[Path, Path | None]:
    """The task's data folder or manifest, and its descriptions file."""
    if name == "shapes":
        from models.data.synthetic import write_shapes_dataset

        folder = write_shapes_dataset(root / "shapes", per_class=40, size=64)
        return folder, folder / "descriptions.json"
    from robust_clip_offline.tasks import FULL, TASKS, build_task

    manifest = build_task(TASKS[name], FULL, root)
    return manifest, manifest.parent / "descriptions.json"


def paired_interval(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of mean(a) - mean(b) over images (a, b: 0/1 per image)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(a)
    idx = torch.randint(0, n, (BOOTSTRAP, n), generator=gen)
    diffs = (a.float()[idx].mean(dim=1) - b.float()[idx].mean(dim=1)).sort().values
    return float(diffs[int(0.025 * BOOTSTRAP)]), float(diffs[int(0.975 * BOOTSTRAP) - 1])


def run_task(name: str, data_root: Path, backbone: str, templates: str) -> dict[str, Any]:
    path, descriptions_file = dataset_for(name, data_root)
    cfg = load_run_config(
        None,
        [f"data.path={path}", f"backbone.arch={backbone}", f"head.templates={templates}"],
    )
    ds = open_dataset(cfg.data.path)
    good = (
        {c: list(t) for c, t in load_descriptions(descriptions_file).items()}
        if descriptions_file
        else {}
    )
    kinds = pool_for(ds.classnames, good)
    pool = {c: list(k) for c, k in kinds.items()}
    classifier = build_classifier(cfg, ds.classnames, {c: (c,) for c in ds.classnames})
    samples = ds.split(cfg.data.train_split)
    started = time.perf_counter()
    plain = ImageDataset(samples, ds.classnames, classifier.backbone.transform(train=False))
    features, labels = image_features(classifier, plain)
    images_s = time.perf_counter() - started
    device = classifier.device

    def encode(texts: Sequence[str]) -> torch.Tensor:
        return encode_texts(classifier.backbone, texts, device).cpu()

    started = time.perf_counter()
    result = score_candidates(
        features, labels.tolist(), ds.classnames, pool, encode, groups=[s.group for s in samples]
    )
    scoring_s = time.perf_counter() - started
    default_hit = (features @ classifier.default_head.float().cpu().t()).argmax(dim=1) == labels
    proposed = result["proposed"]
    rows = F.normalize(
        torch.stack([F.normalize(encode(proposed[c]), dim=-1).mean(dim=0) for c in ds.classnames]),
        dim=-1,
    )
    proposed_hit = (features @ rows.t()).argmax(dim=1) == labels
    hand = (
        torch.stack([F.normalize(encode(good[c]), dim=-1).mean(dim=0) for c in ds.classnames])
        if good
        else None
    )
    hand_top1 = None
    if hand is not None:
        hand_top1 = float(
            ((features @ F.normalize(hand, dim=-1).t()).argmax(dim=1) == labels).float().mean()
        )
    per_kind: dict[str, dict[str, int]] = {}
    for c, entry in result["per_class"].items():
        for item in entry["candidates"]:
            kind = kinds[c][item["text"]]
            counts = per_kind.setdefault(kind, {"kept": 0, "dropped": 0})
            counts["kept" if item["kept"] else "dropped"] += 1
    low, high = paired_interval(proposed_hit, default_hit)
    return {
        "task": name,
        "images": len(samples),
        "classes": len(ds.classnames),
        "candidates": result["candidates"],
        "default_head_top1": float(default_hit.float().mean()),
        "hand_written_concept_top1": hand_top1,
        "proposed_concept_top1": float(proposed_hit.float().mean()),
        "proposed_minus_default": float(proposed_hit.float().mean() - default_hit.float().mean()),
        "proposed_minus_default_95ci": [low, high],
        "by_kind": per_kind,
        "weak_classes": result["weak_classes"],
        "seconds": {"images": images_s, "texts_and_scoring": scoring_s},
        "s_per_1000_images": 1000 * images_s / len(samples),
        "s_per_100_candidates": 100 * scoring_s / result["candidates"],
        "result": result,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.descriptions", description=__doc__)
    p.add_argument("--tasks", default=",".join([*SHIFT_TASKS, "shapes"]))
    p.add_argument("--backbone", default=str(DEFAULT_BACKBONE_CACHE / OFFLINE_BACKBONE))
    p.add_argument("--templates", default="generic")
    p.add_argument("--data-root", default="runs/bench-data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.tasks.split(","):
        row = run_task(name, Path(args.data_root), args.backbone, args.templates)
        (out / f"{name}.json").write_text(json.dumps(row, indent=2) + "\n")
        results.append({k: v for k, v in row.items() if k != "result"})
        print(json.dumps(results[-1]), flush=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "command.txt").write_text(
        "python -m bench.descriptions " + " ".join(sys.argv[1:] if argv is None else argv) + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
