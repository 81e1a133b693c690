"""Metrics against sklearn and hand-computed examples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from models.errors import DataError
from models.metrics import (
    evaluate_probs,
    expected_calibration_error,
    image_record,
    macro_f1,
    unpack_hits,
    unpack_true_prob,
)


def two_class(confidences: list[float], correct: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities [c, 1 - c] with label 0 when the prediction is right, 1 when wrong."""
    conf = torch.tensor(confidences, dtype=torch.float64)
    probs = torch.stack([conf, 1 - conf], dim=1)
    return probs, torch.tensor([0 if ok else 1 for ok in correct])


@pytest.mark.parametrize("seed", range(5))
def test_top1_and_macro_f1_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 7
    # Class 6 never occurs and class 5 is only ever predicted: the "present" rule matters.
    labels = rng.integers(0, 5, 60)
    logits = rng.normal(size=(60, num_classes))
    logits[np.arange(60), labels] += 1.0
    logits[:, 6] -= 100.0
    logits[:3, 5] += 100.0
    probs = torch.softmax(torch.tensor(logits), dim=1)
    preds = probs.argmax(1).numpy()
    result = evaluate_probs(probs, torch.tensor(labels), [f"c{i}" for i in range(num_classes)])
    assert result["top1"] == pytest.approx(accuracy_score(labels, preds))
    assert result["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro"))
    wilds_style = f1_score(labels, preds, average="macro", labels=np.unique(labels))
    assert macro_f1(preds, labels, num_classes, over="labels") == pytest.approx(wilds_style)


def test_macro_f1_hand_example() -> None:
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 0, FN 1 -> 0; class 2 absent -> ignored.
    assert macro_f1([0, 0], [0, 1], num_classes=3) == pytest.approx((2 / 3 + 0) / 2)


def test_ece_hand_example() -> None:
    # Bin (0.8, 0.9]: confidences .85, .85, one right -> |0.5 - 0.85| * 2/4 = 0.175.
    # Bin (0.6, 0.7]: confidences .65, .65, both right -> |1.0 - 0.65| * 2/4 = 0.175.
    probs, labels = two_class([0.85, 0.85, 0.65, 0.65], [True, False, True, True])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.35)
    assert evaluate_probs(probs, labels, ["a", "b"], n_bins=10)["ece"] == pytest.approx(0.35)


def test_ece_of_perfect_calibration_is_zero() -> None:
    confidences = [0.6] * 10 + [0.8] * 10 + [1.0] * 5
    correct = [i < 6 for i in range(10)] + [i < 8 for i in range(10)] + [True] * 5
    probs, labels = two_class(confidences, correct)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_counts_a_confidence_on_an_edge_in_the_bin_it_closes() -> None:
    # With 10 bins, 0.5 closes (0.4, 0.5]: it shares that bin with the 0.45 sample, so the
    # gaps (1 - 0.5) and (0 - 0.45) cancel down to 0.05 over 2 samples.
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.45, 0.35, 0.2]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.025)


def test_worst_group_and_per_class_accuracy() -> None:
    # Predictions are the argmax; label 2 never occurs.
    probs = torch.eye(3)[[0, 0, 1, 1, 0, 1]].double() * 0.8 + 0.2 / 3
    labels = torch.tensor([0, 1, 1, 1, 0, 0])
    groups = ["a", "a", "b", "b", "c", None]
    result = evaluate_probs(probs, labels, ["x", "y", "z"], groups)
    assert result["n"] == 6
    assert result["top1"] == pytest.approx(4 / 6)
    assert result["per_class_acc"] == {
        "x": pytest.approx(2 / 3),
        "y": pytest.approx(2 / 3),
        "z": None,
    }
    assert result["group_acc"] == {"a": 0.5, "b": 1.0, "c": 1.0}
    assert result["worst_group_acc"] == 0.5
    ignored = evaluate_probs(probs, labels, ["x", "y", "z"], groups, ignore_groups={"a"})
    assert ignored["worst_group_acc"] == 1.0 and "a" in ignored["group_acc"]


def test_without_groups_there_is_no_group_accuracy() -> None:
    probs, labels = two_class([0.9, 0.7], [True, False])
    for groups in (None, [None, None]):
        result = evaluate_probs(probs, labels, ["a", "b"], groups)
        assert result["worst_group_acc"] is None and "group_acc" not in result


def test_nll_and_json_serializable() -> None:
    probs, labels = two_class([0.9, 0.6, 1.0], [True, False, False])
    result = evaluate_probs(probs.float(), labels, ["a", "b"], ["g", "h", "g"])
    expected = -(np.log(0.9) + np.log(0.4) + np.log(1e-12)) / 3
    assert result["nll"] == pytest.approx(expected, rel=1e-5)
    assert json.loads(json.dumps(result, allow_nan=False)) == result


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (torch.ones(2, 3) / 3, torch.tensor([0, 1]), "do not match 2 classes"),
        (torch.ones(2, 2) / 2, torch.tensor([0]), "2 predictions for 1 labels"),
        (torch.ones(1, 2) / 2, torch.tensor([2]), r"labels must lie in \[0, 2\)"),
        (torch.ones(0, 2), torch.tensor([], dtype=torch.long), "no samples"),
    ],
)
def test_bad_inputs(probs: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    with pytest.raises(DataError, match=message):
        evaluate_probs(probs, labels, ["a", "b"])


def test_wilds_macro_f1_over_label_classes_by_hand() -> None:
    # Labels use classes 0 and 1; one image of class 0 is predicted as class 2 (never a label).
    # Class 0: TP 1, predicted 1, actual 2 -> F1 2/3. Class 1: TP 2, predicted 2, actual 2 -> 1.
    # Class 2: TP 0, predicted 1, actual 0 -> 0, counted by sklearn's convention only.
    probs = torch.eye(3)[[0, 2, 1, 1]]
    labels = torch.tensor([0, 0, 1, 1])
    wilds = evaluate_probs(probs, labels, ["a", "b", "c"], macro_f1_over="labels")
    sklearn_style = evaluate_probs(probs, labels, ["a", "b", "c"])
    assert wilds["macro_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert sklearn_style["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_worst_region_ignores_other_by_hand() -> None:
    # Europe 2/2, Africa 1/2, Other 0/1: worst region 0.5 without Other, 0 with it.
    probs = torch.eye(2)[[0, 1, 0, 0, 0]]
    labels = torch.tensor([0, 1, 0, 1, 1])
    groups = ["Europe", "Europe", "Africa", "Africa", "Other"]
    kept = evaluate_probs(probs, labels, ["x", "y"], groups)
    wilds = evaluate_probs(probs, labels, ["x", "y"], groups, ignore_groups={"Other"})
    assert kept["worst_group_acc"] == 0.0 and wilds["worst_group_acc"] == 0.5
    assert wilds["group_acc"] == {"Africa": 0.5, "Europe": 1.0, "Other": 0.0}


def test_true_prob_is_the_mean_probability_of_the_true_class() -> None:
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    labels = torch.tensor([0, 2, 1])
    out = evaluate_probs(probs, labels, ["a", "b", "c"])
    assert out["true_prob"] == pytest.approx((0.7 + 0.3 + 0.25) / 3)
    assert out["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.25)) / 3)


def test_image_record_round_trips_hits_and_true_class_probabilities() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(301, 4, generator=gen).softmax(dim=1)
    labels = torch.randint(0, 4, (301,), generator=gen)
    record = image_record(probs, labels, true_prob=True)
    assert record["n"] == 301 and len(record["hits"]) == 2 * 38
    hits = unpack_hits(record)
    assert hits.tolist() == (probs.argmax(dim=1) == labels).tolist()
    picked = probs.gather(1, labels[:, None]).squeeze(1).double().numpy()
    np.testing.assert_allclose(unpack_true_prob(record), picked, rtol=1e-3)
    assert "true_prob" not in image_record(probs, labels)
    with pytest.raises(DataError):
        unpack_hits({"n": 320, "hits": record["hits"]})
