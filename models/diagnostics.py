"""Description diagnostics: does each class's description let the frozen model recognise it?

DRM's worst-case risk leans on the concept head (the class descriptions encoded by the text
tower): p_c of the true class weights each image, so a class whose descriptions the frozen model
cannot match to its own images gets little from DRM, and drags the served dual head down. Before
any training, the frozen model's concept head classifies the training images; per class we
report how often it is right, the mean p_c of the true class, and the class it most often takes
the images for. A class is flagged as weak when its concept-head accuracy is below twice chance
or below half the mean over classes: rewrite its descriptions (what the object looks like, its
parts and shape, never the background) before training on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

WEAK_FRACTION_OF_MEAN = 0.5
WEAK_TIMES_CHANCE = 2.0


def description_diagnostics(
    probs: Tensor, labels: Sequence[int], classnames: Sequence[str]
) -> dict[str, Any]:
    """``probs``: [N, K] p_c of the training images (any per-row scores: argmax and the true
    class's value are read); ``labels``: their classes. JSON-ready."""
    k = len(classnames)
    if probs.ndim != 2 or probs.shape != (len(labels), k):
        raise ValueError(
            f"probs of shape {tuple(probs.shape)} for {len(labels)} images, {k} classes"
        )
    target = torch.as_tensor(list(labels), dtype=torch.long)
    predicted = probs.argmax(dim=1)
    p_true = probs.gather(1, target[:, None]).squeeze(1)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classnames):
        rows = target == c
        n = int(rows.sum())
        if n == 0:
            continue
        wrong = predicted[rows & (predicted != c)]
        confused = None
        if wrong.numel():
            counts = torch.bincount(wrong, minlength=k)
            confused = classnames[int(counts.argmax())]
        per_class[name] = {
            "n": n,
            "concept_top1": round(float((predicted[rows] == c).float().mean()), 4),
            "pc_true": round(float(p_true[rows].mean()), 4),
            "confused_with": confused,
        }
    accuracies = [v["concept_top1"] for v in per_class.values()]
    mean = sum(accuracies) / len(accuracies) if accuracies else 0.0
    threshold = max(WEAK_TIMES_CHANCE / k, WEAK_FRACTION_OF_MEAN * mean)
    weak = sorted(
        (name for name, v in per_class.items() if v["concept_top1"] < threshold),
        key=lambda name: per_class[name]["concept_top1"],
    )
    return {
        "images": len(labels),
        "concept_top1": round(float((predicted == target).float().mean()), 4) if labels else 0.0,
        "chance": round(1.0 / k, 4),
        "weak_threshold": round(threshold, 4),
        "weak": weak,
        "per_class": per_class,
    }


def summary_line(diagnostics: dict[str, Any]) -> str:
    """One line for a job's events and the CLI's log."""
    head = (
        f"description diagnostics: the frozen concept head gets "
        f"{diagnostics['concept_top1']:.1%} of {diagnostics['images']} training images right"
    )
    weak = diagnostics["weak"]
    if not weak:
        return head + "; no class looks weak"
    listed = ", ".join(
        f"{name} ({diagnostics['per_class'][name]['concept_top1']:.0%}, taken for "
        f"{diagnostics['per_class'][name]['confused_with']})"
        for name in weak[:10]
    )
    return (
        f"{head}; WEAK descriptions (concept-head top-1 below "
        f"{diagnostics['weak_threshold']:.0%}): {listed}"
    )


def near_chance(diagnostics: dict[str, Any]) -> bool:
    """The pre-training guard's test: the concept head below twice chance over all training
    images, or more than half of the classes weak."""
    overall = diagnostics["concept_top1"] < WEAK_TIMES_CHANCE * diagnostics["chance"]
    return overall or len(diagnostics["weak"]) * 2 > len(diagnostics["per_class"])


def guard_message(diagnostics: dict[str, Any]) -> str:
    """What is wrong with a near-chance concept head, the weak classes, and the fix."""
    weak = diagnostics["weak"]
    listed = ", ".join(repr(name) for name in weak[:20]) + (" ..." if len(weak) > 20 else "")
    return (
        f"the frozen concept head is near chance on the training images "
        f"({diagnostics['concept_top1']:.1%}, chance {diagnostics['chance']:.1%}; "
        f"{len(weak)} of {len(diagnostics['per_class'])} classes weak: {listed or 'none'}). "
        "Its p_c is what DRM weighs every image by, and half of what the dual head serves. "
        "Fix the descriptions: name the class in each and describe what it looks like (shape, "
        "parts), never the background; or score a pool of candidates and take the proposal "
        "(POST /descriptions/score, `python -m models descriptions propose`)"
    )
