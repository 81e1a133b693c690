"""Description diagnostics: does each class's description let the frozen model recognise it?

DRM's worst-case risk leans on the concept head (the class descriptions encoded by the text
tower): p_c of the true class weights each image, so a class whose descriptions the frozen model
cannot match to its own images gets little from DRM, and drags the served dual head down. Before
any training, the frozen model's concept head classifies the training images; per class we
report how often it is right, the mean p_c of the true class, and the class it most often takes
the images for. A class is flagged as weak when its concept-head accuracy is below twice chance
or below half the mean over classes: rewrite its descriptions (what the object looks like, its
parts and shape, never the background) before training on them.

What a good set scores (``head_comparison``): the concept head is then about as right as the
default head (the class names in the templates) on the same images, within ``ACCEPT_GAP`` (3
points), and, where the images carry groups (a spurious feature aligned with the label or in
conflict with it), about as right on every group: descriptions of core features must not lean
on the feature that only predicts the label in some groups. A set that passes both is
``accepted``; the two numbers are there for a set that does not.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

WEAK_FRACTION_OF_MEAN = 0.5
WEAK_TIMES_CHANCE = 2.0
# A good set's concept head is within this of the default head's top-1, and (with groups) its
# top-1 on every group within this of the others' (or within two standard errors of the
# difference, when the smaller group is too small to tell 3 points from 0).
ACCEPT_GAP = 0.03


def description_diagnostics(
    probs: Tensor,
    labels: Sequence[int],
    classnames: Sequence[str],
    default: Tensor | None = None,
    groups: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """``probs``: [N, K] p_c of the training images (any per-row scores: argmax and the true
    class's value are read); ``labels``: their classes. With ``default``, the default head's
    probabilities on the same images, the comparison and verdict of ``head_comparison`` (per
    ``groups`` where given) are part of the answer. JSON-ready."""
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
    answer = {
        "images": len(labels),
        "concept_top1": round(float((predicted == target).float().mean()), 4) if labels else 0.0,
        "chance": round(1.0 / k, 4),
        "weak_threshold": round(threshold, 4),
        "weak": weak,
        "per_class": per_class,
    }
    if default is not None:
        answer |= head_comparison(probs, default, labels, classnames, groups)
    return answer


def _top1(probs: Tensor, target: Tensor) -> float:
    return float((probs.argmax(dim=1) == target).float().mean()) if len(target) else 0.0


def head_comparison(
    concept: Tensor,
    default: Tensor,
    labels: Sequence[int],
    classnames: Sequence[str],
    groups: Sequence[str | None] | None = None,
) -> dict[str, Any]:
    """The concept head (``concept``, [N, K] probabilities) against the default head
    (``default``) on the same images, per class and per group, and whether the set is accepted
    (module docstring). JSON-ready; merged into ``description_diagnostics``'s answer."""
    target = torch.as_tensor(list(labels), dtype=torch.long)
    if concept.shape != default.shape or concept.shape[0] != len(target):
        raise ValueError(
            f"concept {tuple(concept.shape)} and default {tuple(default.shape)} probabilities "
            f"for {len(target)} images"
        )
    concept_top1, default_top1 = _top1(concept, target), _top1(default, target)
    per_class = {}
    for c, name in enumerate(classnames):
        rows = target == c
        if int(rows.sum()):
            per_class[name] = round(_top1(default[rows], target[rows]), 4)
    gap = concept_top1 - default_top1
    reasons = []
    if gap < -ACCEPT_GAP:
        reasons.append(
            f"the concept head is {-gap:.1%} below the default head ({concept_top1:.1%} "
            f"against {default_top1:.1%}; at most {ACCEPT_GAP:.0%} is accepted)"
        )
    by_group: dict[str, dict[str, Any]] = {}
    spread = None
    if groups is not None and any(g is not None for g in groups):
        names = ["(none)" if g is None else str(g) for g in groups]
        for group in sorted(set(names)):
            rows = torch.as_tensor([n == group for n in names])
            by_group[group] = {
                "n": int(rows.sum()),
                "concept_top1": round(_top1(concept[rows], target[rows]), 4),
                "default_top1": round(_top1(default[rows], target[rows]), 4),
            }
        if len(by_group) > 1:
            low = min(by_group, key=lambda g: by_group[g]["concept_top1"])
            high = max(by_group, key=lambda g: by_group[g]["concept_top1"])
            a, b = by_group[low], by_group[high]
            spread = b["concept_top1"] - a["concept_top1"]
            se = math.sqrt(
                sum(g["concept_top1"] * (1 - g["concept_top1"]) / g["n"] for g in (a, b))
            )
            allowed = max(ACCEPT_GAP, 2 * se)
            if spread > allowed:
                reasons.append(
                    f"the concept head is {spread:.1%} less right on group {low!r} "
                    f"({a['concept_top1']:.1%} of {a['n']}) than on {high!r} "
                    f"({b['concept_top1']:.1%} of {b['n']}; at most {allowed:.1%} is accepted): "
                    "the descriptions lean on what only predicts the label in some groups"
                )
    return {
        "default_top1": round(default_top1, 4),
        "gap": round(gap, 4),
        "default_per_class": per_class,
        "groups": by_group,
        "group_spread": None if spread is None else round(spread, 4),
        "accepted": not reasons,
        "reasons": reasons,
        "accept_gap": ACCEPT_GAP,
    }


def set_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` - ``a`` for two sets' diagnostics on the same images: overall and per class
    concept-head top-1 and mean p_c of the true class, and the classes weak in one only."""
    per_class = {
        name: {
            key: round(b["per_class"][name][key] - row[key], 4)
            for key in ("concept_top1", "pc_true")
        }
        for name, row in a["per_class"].items()
        if name in b["per_class"]
    }
    return {
        "concept_top1": round(b["concept_top1"] - a["concept_top1"], 4),
        "per_class": per_class,
        "weak_only_in_a": sorted(set(a["weak"]) - set(b["weak"])),
        "weak_only_in_b": sorted(set(b["weak"]) - set(a["weak"])),
    }


def summary_line(diagnostics: dict[str, Any]) -> str:
    """One line for a job's events and the CLI's log."""
    head = (
        f"description diagnostics: the frozen concept head gets "
        f"{diagnostics['concept_top1']:.1%} of {diagnostics['images']} training images right"
    )
    if "default_top1" in diagnostics:
        verdict = "accepted" if diagnostics["accepted"] else "not accepted"
        head += f" (default head {diagnostics['default_top1']:.1%}; {verdict})"
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
