"""What the frozen model's core-based prediction p_c says about each task's training images.

DRM can only help where p_c tells images apart: its ``weight`` reading scales each image's
worst-case loss by p_c of the true class, its ``soft`` reading distils towards p_c renormalised.
This measures, per task and per group of training images (for ``fashion-spurious``: whether the
background colour agrees with the class), under both normalisations of p_c (``prob``: min-max
of the concept head's probabilities; ``affinity``: min-max of the raw cosines), the mean p_c of
the true class, how often the concept head's arg-max is the true class, and how much of the soft
target's mass lies on the true class. It reads the ID training split only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.shift.plan import Plan, hparams_for, run_config
from models.config import PC_NORMS
from models.objectives import PC_EPS
from models.pipeline import build_classifier, core_prior, prepare_data
from robust_clip_offline.tasks import Task, build_task

ALL = "all"


def core_prior_stats(
    cache: torch.Tensor, labels: Sequence[int], groups: Sequence[str | None]
) -> dict[str, dict[str, float]]:
    """{group: {n, pc_true, concept_top1, soft_true, uniform}} from p_c rows of the images."""
    target = torch.tensor(list(labels))
    p_true = cache.gather(1, target[:, None]).squeeze(1)
    soft_true = p_true / cache.sum(dim=1).clamp_min(PC_EPS)
    hit = (cache.argmax(dim=1) == target).float()
    names = [g or ALL for g in groups]
    out: dict[str, dict[str, float]] = {}
    for group in [ALL, *sorted(set(names) - {ALL})]:
        rows = [i for i, g in enumerate(names) if group == ALL or g == group]
        idx = torch.tensor(rows)
        out[group] = {
            "n": len(rows),
            "pc_true": float(p_true[idx].mean()),
            "concept_top1": float(hit[idx].mean()),
            "soft_true": float(soft_true[idx].mean()),
            "uniform": 1.0 / cache.shape[1],
        }
    return out


def core_prior_for_task(plan: Plan, task: Task, norm: str = "prob") -> dict[str, dict[str, float]]:
    manifest = build_task(task, plan.sizes, plan.data_root)
    hp = {**hparams_for(plan, task.name, "drm-weight"), "pc_norm": norm, "pc_mode": "cached"}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = run_config(plan, task, manifest, "drm-weight", plan.seeds[0], Path(tmp), hp)
        ds, descriptions = prepare_data(cfg)
        classifier = build_classifier(cfg, ds.classnames, descriptions)
        train = ds.split(cfg.data.train_split)
        prior = core_prior(cfg, classifier, train, ds.classnames)
    assert prior is not None and prior.cache is not None
    return core_prior_stats(prior.cache, [s.label for s in train], [s.group for s in train])


def markdown(stats: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]]) -> str:
    """``stats``: {task: {norm: {group: core_prior_stats row}}}."""
    lines = [
        "p_c of the frozen zero-shot model on each task's ID training images, under both "
        "normalisations (`prob`: min-max over classes of the concept head's probabilities "
        "with the frozen model's logit scale, the default; `affinity`: min-max of the raw "
        "cosine affinities, the first reconstruction). `soft target`: the share of the "
        "renormalised p_c on the true class, what the `soft` reading distils towards; "
        "`uniform`: that share for a uniform target, 1/K.",
        "",
        "| task | images | n | p_c(true) prob | p_c(true) affinity | concept head top-1 "
        "| soft target on true, prob | soft target on true, affinity | uniform |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, by_norm in stats.items():
        prob, affinity = by_norm["prob"], by_norm["affinity"]
        for group, s in prob.items():
            a = affinity[group]
            lines.append(
                f"| {task} | {group} | {s['n']} | {s['pc_true']:.3f} | {a['pc_true']:.3f} "
                f"| {s['concept_top1']:.3f} | {s['soft_true']:.3f} | {a['soft_true']:.3f} "
                f"| {s['uniform']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def core_prior_report(plan: Plan) -> str:
    return markdown(
        {
            task.name: {norm: core_prior_for_task(plan, task, norm) for norm in PC_NORMS}
            for task in plan.tasks
        }
    )
