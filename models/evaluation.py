"""Evaluate a classifier on dataset splits: image features once, every head from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from models.data import ImageDataset, Sample
from models.heads import HEAD_NAMES, Classifier
from models.metrics import evaluate_probs

EVAL_BATCH = 64


@torch.no_grad()
def image_features(
    classifier: Classifier,
    dataset: ImageDataset,
    batch_size: int = EVAL_BATCH,
    num_workers: int = 0,
) -> tuple[Tensor, Tensor]:
    """Normalised image features and labels of every sample, in dataset order."""
    was_training = classifier.training
    classifier.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    features, labels = [], []
    for images, label, _ in loader:
        features.append(classifier.image_features(images.to(classifier.device)).float().cpu())
        labels.append(label)
    classifier.train(was_training)
    return torch.cat(features), torch.cat(labels)


def evaluate_split(
    classifier: Classifier,
    dataset: ImageDataset,
    heads: Sequence[str] = HEAD_NAMES,
    num_workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """Metrics per head (default, concept, dual) on one split."""
    features, labels = image_features(classifier, dataset, num_workers=num_workers)
    features = features.to(classifier.device)
    groups = dataset.groups if any(g is not None for g in dataset.groups) else None
    results = {}
    for head in heads:
        probs = classifier.probs_from_features(features, head).cpu()
        results[head] = evaluate_probs(probs, labels, classifier.classnames, groups)
    return results


def split_evaluator(
    splits: Mapping[str, Sequence[Sample]],
    classnames: Sequence[str],
    transform: Callable[[Any], Tensor],
    heads: Sequence[str] = HEAD_NAMES,
    num_workers: int = 0,
) -> Callable[[Classifier], dict[str, dict[str, Any]]]:
    """A function classifier -> {split: {head: metrics}} over fixed splits."""
    datasets = {name: ImageDataset(s, classnames, transform) for name, s in splits.items()}

    def evaluate(classifier: Classifier) -> dict[str, dict[str, Any]]:
        return {
            name: evaluate_split(classifier, ds, heads, num_workers)
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
