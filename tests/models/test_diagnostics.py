"""models.diagnostics on hand-made p_c rows: per-class accuracy, confusions, weak classes."""

from __future__ import annotations

import pytest
import torch

from models.diagnostics import description_diagnostics, summary_line

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
