"""models.diagnostics on hand-made p_c rows: per-class accuracy, confusions, weak classes."""

from __future__ import annotations

import pytest
import torch

from models.diagnostics import (
    description_diagnostics,
    head_comparison,
    set_difference,
    summary_line,
)

CLASSES = ["cat", "dog", "fox", "owl"]


def rows(*winners: int) -> torch.Tensor:
    """One p_c row per image: 1 on its winner, 0.2 elsewhere."""
    out = torch.full((len(winners), len(CLASSES)), 0.2)
    for i, w in enumerate(winners):
        out[i, w] = 1.0
    return out


def test_per_class_accuracy_confusion_and_weak_classes() -> None:
    labels = [0, 0, 1, 1, 2, 2, 2, 2, 3, 3]
    # cat 2/2, dog 2/2, fox 1/4 (taken for dog twice, owl once), owl 0/2 (taken for cat).
    probs = rows(0, 0, 1, 1, 2, 1, 1, 3, 0, 0)
    got = description_diagnostics(probs, labels, CLASSES)
    assert got["images"] == 10 and got["chance"] == 0.25
    assert got["concept_top1"] == pytest.approx(0.5)
    fox = got["per_class"]["fox"]
    assert fox == {
        "n": 4,
        "concept_top1": 0.25,
        "pc_true": pytest.approx(0.4),
        "confused_with": "dog",
    }
    assert got["per_class"]["cat"]["confused_with"] is None
    # Threshold: max(2 x chance = 0.5, half the mean of 1, 1, 0.25, 0 = 0.28125) = 0.5.
    assert got["weak_threshold"] == 0.5
    assert got["weak"] == ["owl", "fox"]  # the weakest first
    line = summary_line(got)
    assert "WEAK descriptions" in line and "owl (0%, taken for cat)" in line


def test_no_weak_class_and_missing_classes() -> None:
    got = description_diagnostics(rows(0, 1, 2), [0, 1, 2], CLASSES)
    assert got["weak"] == [] and "owl" not in got["per_class"]
    assert summary_line(got).endswith("no class looks weak")


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="for 2 images, 4 classes"):
        description_diagnostics(rows(0, 1, 2), [0, 1], CLASSES)


def test_a_concept_head_more_than_3_points_below_the_default_head_is_not_accepted() -> None:
    labels = [0, 1, 2, 3] * 10
    default = rows(*labels)  # the class names: every image right
    concept = rows(*([0, 1, 2, 0] * 9 + [0, 1, 2, 3]))  # owl taken for cat on 9 of 10 images
    got = description_diagnostics(concept, labels, CLASSES, default)
    assert got["default_top1"] == 1.0 and got["concept_top1"] == pytest.approx(0.775)
    assert got["gap"] == pytest.approx(-0.225) and got["accepted"] is False
    assert "22.5% below the default head" in got["reasons"][0]
    assert got["default_per_class"] == {c: 1.0 for c in CLASSES}
    assert "not accepted" in summary_line(got)
    # 1 image wrong of 40 (2.5 points below): within the 3 points a good set is allowed.
    near = rows(*([0, 1, 2, 0] + labels[4:]))
    assert description_diagnostics(near, labels, CLASSES, default)["accepted"] is True


def test_a_set_right_on_aligned_images_only_is_not_accepted_unless_the_groups_are_too_small() -> (
    None
):
    labels = [0, 1, 2, 3] * 50
    groups = ["aligned"] * 100 + ["conflicting"] * 100
    # Right on every aligned image, on 60 of 100 conflicting ones: it reads the background.
    winners = labels[:100] + [(y + 1) % 4 if i % 5 < 2 else y for i, y in enumerate(labels[100:])]
    got = head_comparison(rows(*winners), rows(*winners), labels, CLASSES, groups)
    assert got["groups"]["aligned"] == {"n": 100, "concept_top1": 1.0, "default_top1": 1.0}
    assert got["groups"]["conflicting"]["concept_top1"] == pytest.approx(0.6)
    assert got["gap"] == 0.0 and got["group_spread"] == pytest.approx(0.4)
    assert got["accepted"] is False
    assert "less right on group 'conflicting'" in got["reasons"][0]
    # 4 images a group, 4/4 against 3/4: two standard errors (43 points) cannot tell that from 0.
    small = head_comparison(
        rows(0, 1, 2, 3, 0, 1, 2, 0),
        rows(0, 1, 2, 3, 0, 1, 2, 0),
        [0, 1, 2, 3] * 2,
        CLASSES,
        ["a"] * 4 + ["b"] * 4,
    )
    assert small["group_spread"] == pytest.approx(0.25) and small["accepted"] is True


def test_two_sets_on_the_same_images_differ_per_class() -> None:
    labels = [0, 1, 2, 3]
    a = description_diagnostics(rows(0, 1, 2, 0), labels, CLASSES)
    b = description_diagnostics(rows(0, 1, 1, 3), labels, CLASSES)
    diff = set_difference(a, b)
    assert diff["concept_top1"] == 0.0
    assert diff["per_class"]["owl"]["concept_top1"] == 1.0
    assert diff["per_class"]["fox"]["concept_top1"] == -1.0
    assert diff["per_class"]["cat"] == {"concept_top1": 0.0, "pc_true": 0.0}
    assert diff["weak_only_in_a"] == ["owl"] and diff["weak_only_in_b"] == ["fox"]


def test_default_probabilities_of_another_shape_are_refused() -> None:
    with pytest.raises(ValueError, match="probabilities for 3 images"):
        head_comparison(rows(0, 1, 2), rows(0, 1), [0, 1, 2], CLASSES)
