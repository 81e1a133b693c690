"""Evaluation conventions: ImageNet-R/A scored on their class subset, logits projected first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from models.data import ImageDataset, Sample, Scoring
from models.errors import DataError
from models.evaluation import evaluate_split, scored_probs
from models.heads import Classifier, blend


def _dataset(classifier: Classifier, tmp_path: Path, labels: list[int]) -> ImageDataset:
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(path)
    samples = [Sample(str(path), y) for y in labels]
    return ImageDataset(samples, classifier.classnames, classifier.backbone.transform())


def _heads(classifier: Classifier, default: torch.Tensor, concept: torch.Tensor) -> None:
    with torch.no_grad():
        classifier.default_head.copy_(default)
        classifier.concept_head.copy_(concept)


def test_projection_happens_before_the_softmax_of_each_head(classifier: Classifier) -> None:
    gen = torch.Generator().manual_seed(0)
    dim = classifier.default_head.shape[1]
    features = torch.nn.functional.normalize(torch.randn(5, dim, generator=gen), dim=-1)
    subset = (0, 2)
    index = torch.tensor(subset)
    scale = classifier.clip.logit_scale.exp()
    default = scale * features @ classifier.default_head.t()
    concept = scale * features @ classifier.concept_head.t()
    expected = blend(default[:, index], concept[:, index], classifier.beta)
    got = scored_probs(classifier, features, "dual", subset)
    torch.testing.assert_close(got, expected.detach())
    torch.testing.assert_close(got.sum(dim=-1), torch.ones(5))
    # Not the full softmax restricted afterwards: that would not sum to one.
    restricted = classifier.probs_from_features(features, "dual")[:, index]
    assert (restricted.sum(dim=-1) < 1 - 1e-4).all()


def test_a_subset_scored_split_counts_a_hit_the_full_argmax_misses(
    classifier: Classifier, tmp_path: Path
) -> None:
    """By hand: images of class 2 whose cosines to the heads are 0.3, 0.1, 0.5, 0.9."""
    dataset = _dataset(classifier, tmp_path, [2, 2])
    feature = classifier.image_features(dataset[0][0][None]).detach()[0]
    cosines = torch.tensor([0.3, 0.1, 0.5, 0.9])
    gen = torch.Generator().manual_seed(1)
    others = torch.randn(4, feature.numel(), generator=gen)
    others = torch.nn.functional.normalize(others - (others @ feature)[:, None] * feature, dim=-1)
    rows = cosines[:, None] * feature + (1 - cosines**2).sqrt()[:, None] * others
    _heads(classifier, rows, rows)
    full = evaluate_split(classifier, dataset, heads=("default", "dual"))
    scoring = Scoring(classes=(0, 2))
    projected = evaluate_split(classifier, dataset, heads=("default", "dual"), scoring=scoring)
    for head in ("default", "dual"):
        assert full[head]["top1"] == 0.0  # the full argmax is class 3
        assert projected[head]["top1"] == 1.0  # among classes 0 and 2, class 2 wins
    names = classifier.classnames
    assert set(projected["dual"]["per_class_acc"]) == {names[0], names[2]}


def test_a_label_outside_the_scored_subset_is_named(classifier: Classifier, tmp_path: Path) -> None:
    dataset = _dataset(classifier, tmp_path, [1])
    with pytest.raises(DataError, match=f"'{classifier.classnames[1]}' lie outside the 2 classes"):
        evaluate_split(classifier, dataset, scoring=Scoring(classes=(0, 2)))
