"""bench/monitor.py's figures: the AUROC is Mann-Whitney's, windows are what they say (sizes,
shares, no image twice in a window), conditions cover every OOD split and mixture, and the
summary reads the records it is given."""

from __future__ import annotations

import numpy as np
import pytest

from bench import monitor


def test_auroc_is_the_share_of_pairs_ordered_right_with_ties_half() -> None:
    assert monitor.auroc([0, 1], [2, 3]) == 1.0
    assert monitor.auroc([2, 3], [0, 1]) == 0.0
    assert monitor.auroc([1, 1], [1, 1]) == 0.5
    assert monitor.auroc([0, 2], [1, 3]) == pytest.approx(0.75)


def test_windows_have_their_size_and_share_and_no_repeated_image() -> None:
    rng = np.random.default_rng(0)
    windows = monitor.draw_windows(100, 50, 40, 0.25, 5, rng)
    assert len(windows) == 5
    for ids, oods in windows:
        assert len(ids) == 30 and len(oods) == 10
        assert len(set(ids.tolist())) == 30 and len(set(oods.tolist())) == 10
    assert monitor.draw_windows(100, 50, 256, 1.0, 5, rng) == []  # the pool is too small


def test_conditions_cover_each_split_pure_and_mixed() -> None:
    names = [c[0] for c in monitor.conditions(["ood_a", "ood_b"])]
    assert names == [
        "id",
        "ood_a", "ood_a@10%", "ood_a@25%", "ood_a@50%",
        "ood_b", "ood_b@10%", "ood_b@25%", "ood_b@50%",
    ]  # fmt: skip


def test_summary_reads_false_alarms_auroc_and_error() -> None:
    def record(condition: str, split: str | None, score: float, drifted: bool, i: int) -> dict:
        return {
            "task": "t", "size": 64, "condition": condition, "split": split, "share": 1.0,
            "window": i, "drift_score": score, "drifted": drifted, "true_top1": 0.8,
            "atc": 0.7, "atc_interval": [0.6, 0.9], "average_confidence": 0.9,
        }  # fmt: skip

    records = [record("id", None, 0.1 * i, i == 0, i) for i in range(10)]
    records += [record("ood", "ood", 5 + i, True, i) for i in range(10)]
    figures = monitor.summarise(records, None, {"t": {"test": 0.9, "ood": 0.6}})
    [alarms] = figures["false_alarms"]
    assert alarms["ours"] == pytest.approx(0.1) and alarms["windows"] == 10
    [drift] = figures["drift"]
    assert drift["ours"] == 1.0 and drift["split_top1"] == 0.6
    atc = next(a for a in figures["accuracy"] if a["estimator"] == "atc")
    assert atc["mae"] == pytest.approx(0.1) and atc["coverage"] == 1.0
    assert "| t | 64 | ood |" in monitor.report({**figures, "throughput": []})
