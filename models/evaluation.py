"""Evaluate a classifier on dataset splits: image features once, every head from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from models.data import ImageDataset, Sample, Scoring
from models.errors import Cancelled, ConfigError, DataError
from models.heads import HEAD_NAMES, Classifier, blend
from models.metrics import evaluate_probs, image_record

EVAL_BATCH = 64
# Asked between batches; True stops the evaluation (raises Cancelled). The caller decides why.
ShouldStop = Callable[[], bool]
# What a split's metrics keep per image (models.metrics.image_record), under each head's
# "images": "hits" (right or not), "true_prob" (hits and the true class's probability).
IMAGE_RECORDS = ("hits", "true_prob")


def check_stop(should_stop: ShouldStop | None, where: str) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled(f"stopped during {where}")


@torch.no_grad()
def image_features(
    classifier: Classifier,
    dataset: ImageDataset,
    batch_size: int = EVAL_BATCH,
    num_workers: int = 0,
    should_stop: ShouldStop | None = None,
) -> tuple[Tensor, Tensor]:
    """Normalised image features and labels of every sample, in dataset order."""
    was_training = classifier.training
    classifier.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    features, labels = [], []
    try:
        for images, label, _ in loader:
            # A large evaluation set takes minutes: a cancel must not wait for all of it.
            check_stop(should_stop, "evaluation")
            features.append(classifier.image_features(images.to(classifier.device)).float().cpu())
            labels.append(label)
    finally:
        classifier.train(was_training)
    return torch.cat(features), torch.cat(labels)


def evaluate_split(
    classifier: Classifier,
    dataset: ImageDataset,
    heads: Sequence[str] = HEAD_NAMES,
    num_workers: int = 0,
    should_stop: ShouldStop | None = None,
    scoring: Scoring | None = None,
    images: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics per head (default, concept, dual) on one split, scored as ``scoring`` says;
    ``images`` (from IMAGE_RECORDS) adds each head's per-image record as ``images``."""
    if images is not None and images not in IMAGE_RECORDS:
        raise ConfigError(f"images must be one of {list(IMAGE_RECORDS)}, got {images!r}")
    features, labels = image_features(
        classifier, dataset, num_workers=num_workers, should_stop=should_stop
    )
    features = features.to(classifier.device)
    groups = dataset.groups if any(g is not None for g in dataset.groups) else None
    rule = scoring or Scoring()
    classnames: Sequence[str] = classifier.classnames
    if rule.classes is not None:
        labels = subset_labels(labels, rule.classes, classnames)
        classnames = [classnames[k] for k in rule.classes]
    results = {}
    for head in heads:
        probs = scored_probs(classifier, features, head, rule.classes).cpu()
        results[head] = evaluate_probs(
            probs,
            labels,
            classnames,
            groups,
            ignore_groups=rule.ignore_groups,
            macro_f1_over=rule.macro_f1_over,
        )
        if images is not None:
            results[head]["images"] = image_record(probs, labels, images == "true_prob")
    return results


def scored_probs(
    classifier: Classifier, features: Tensor, head: str, classes: Sequence[int] | None
) -> Tensor:
    """Probabilities of ``head``; with ``classes``, over that subset only.

    The logits are projected onto the subset *before* the softmax (and, for the dual head,
    before each head's softmax), as WiSE-FT, FLYP and DRM score ImageNet-R and ImageNet-A.
    """
    if classes is None:
        return classifier.probs_from_features(features, head)
    if head not in HEAD_NAMES:
        raise ConfigError(f"head must be one of {list(HEAD_NAMES)}, got {head!r}")
    index = torch.tensor(list(classes), device=features.device)
    default = classifier.logits_from_features(features, "default")[:, index]
    concept = classifier.logits_from_features(features, "concept")[:, index]
    if head == "default":
        return default.float().softmax(dim=-1)
    if head == "concept":
        return concept.float().softmax(dim=-1)
    return blend(default, concept, classifier.beta)


def subset_labels(labels: Tensor, classes: Sequence[int], classnames: Sequence[str]) -> Tensor:
    """Labels as positions in ``classes``; a label outside the subset cannot be scored on it."""
    position = {k: i for i, k in enumerate(classes)}
    outside = sorted({int(y) for y in labels.tolist()} - set(position))
    if outside:
        names = ", ".join(f"'{classnames[k]}'" for k in outside[:3])
        raise DataError(f"class(es) {names} lie outside the {len(classes)} classes scored here")
    return torch.tensor([position[int(y)] for y in labels.tolist()], dtype=torch.long)


def split_evaluator(
    splits: Mapping[str, Sequence[Sample]],
    classnames: Sequence[str],
    transform: Callable[[Any], Tensor],
    heads: Sequence[str] = HEAD_NAMES,
    num_workers: int = 0,
    should_stop: ShouldStop | None = None,
    scoring: Mapping[str, Scoring] | None = None,
    images: Mapping[str, str] | None = None,
) -> Callable[[Classifier], dict[str, dict[str, Any]]]:
    """A function classifier -> {split: {head: metrics}} over fixed splits; ``should_stop``
    is asked between batches; ``scoring`` gives the splits a benchmark scores its own way;
    ``images`` ({split: "hits" or "true_prob"}) the splits whose per-image records are kept."""
    datasets = {name: ImageDataset(s, classnames, transform) for name, s in splits.items()}

    def evaluate(classifier: Classifier) -> dict[str, dict[str, Any]]:
        return {
            name: evaluate_split(
                classifier,
                ds,
                heads,
                num_workers,
                should_stop,
                (scoring or {}).get(name),
                (images or {}).get(name),
            )
            for name, ds in datasets.items()
        }

    return evaluate


def summary(metrics: Mapping[str, Mapping[str, Mapping[str, Any]]], head: str = "dual") -> str:
    """One line: top-1 of ``head`` per split, e.g. ``val 0.812 | ood_test 0.655``."""
    parts = []
    for split, per_head in metrics.items():
        m = per_head[head]
        parts.append(f"{split} {m['top1']:.3f}")
    return " | ".join(parts)
