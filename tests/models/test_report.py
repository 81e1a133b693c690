"""models.report: the robustness report and plot are pure functions of the run card."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from models.errors import ModelsError
from models.report import ErPoint, er_points, plot_effective_robustness, report_png
from models.report import robustness_report as report


def _metrics(top1: dict[str, float], per_class: dict[str, float] | None = None) -> dict[str, Any]:
    def head(value: float) -> dict[str, Any]:
        return {
            "n": 10,
            "top1": value,
            "macro_f1": value,
            "per_class_acc": per_class or {},
            "worst_group_acc": 0.25 if per_class else None,
            "ece": 0.1,
        }

    return {
        split: {h: head(v) for h in ("default", "concept", "dual")} for split, v in top1.items()
    }


def card(selected: float = 0.5, with_test: bool = True) -> dict[str, Any]:
    ids = {"val": 0.0, "test": 0.0} if with_test else {"val": 0.0}
    values = {  # alpha -> (ID, ood_a, ood_b)
        0.0: (0.60, 0.50, 0.40),
        0.5: (0.80, 0.60, 0.50),
        1.0: (0.90, 0.30, 0.20),
    }
    curve = [
        {
            "alpha": alpha,
            "metrics": _metrics(
                {**{s: i for s in ids}, "ood_a": a, "ood_b": b},
                per_class={"cat": 1.0, "dog": 0.5} if alpha == selected else None,
            ),
        }
        for alpha, (i, a, b) in values.items()
    ]
    return {
        "objective": "drm",
        "config": {"data": {"val_split": "val", "ood_splits": ["ood_a", "ood_b"]}},
        "wise": {
            "selection": "tolerance",
            "metric": "top1",
            "selected_alpha": selected,
            "curve": curve,
        },
    }


def test_er_points_read_id_on_test_and_average_the_ood_splits() -> None:
    assert er_points(card()) == [
        ErPoint(0.0, 0.60, pytest.approx(0.45)),
        ErPoint(0.5, 0.80, pytest.approx(0.55)),
        ErPoint(1.0, 0.90, pytest.approx(0.25)),
    ]
    # Without a test split, ID is read on validation.
    assert er_points(card(with_test=False))[1].id_top1 == 0.80


def test_report_gives_the_selected_point_its_gain_and_per_class_accuracy() -> None:
    got = report(card(selected=0.5))
    assert got["selection"] == {"rule": "tolerance", "metric": "top1", "alpha": 0.5, "head": "dual"}
    assert got["served_head"] == "dual"  # a card from before heads were chosen
    assert got["objective"] == "drm"
    assert got["id_split"] == "test" and got["ood_splits"] == ["ood_a", "ood_b"]
    assert got["gain_over_zeroshot"] == {"id": pytest.approx(0.2), "ood": pytest.approx(0.1)}
    assert got["zeroshot"]["ood_a"]["dual"]["top1"] == 0.50
    assert got["finetuned"]["ood_b"]["dual"]["top1"] == 0.20
    assert got["per_class_acc"]["test"] == {"cat": 1.0, "dog": 0.5}
    assert got["worst_group_acc"]["ood_a"] == 0.25
    assert [p["alpha"] for p in got["curve"]] == [0.0, 0.5, 1.0]
    assert got["curve"][2]["ood_top1"] == pytest.approx(0.25)


def test_the_report_reads_the_head_the_rule_chose() -> None:
    # wise.heads may let the rule serve the default head: the report's figures are that head's.
    served = card(selected=0.5)
    for point in served["wise"]["curve"]:
        for split in point["metrics"].values():
            split["default"] = {**split["default"], "top1": split["default"]["top1"] + 0.05}
    served["wise"]["selected_head"] = "default"
    got = report(served)
    assert got["served_head"] == "default" and got["selection"]["head"] == "default"
    assert got["curve"][1]["id_top1"] == pytest.approx(0.85)
    assert got["gain_over_zeroshot"] == {"id": pytest.approx(0.2), "ood": pytest.approx(0.1)}
    assert er_points(served, "dual")[1].id_top1 == 0.80


def test_a_card_without_a_curve_has_no_report() -> None:
    with pytest.raises(ModelsError, match="no WiSE-FT curve"):
        report({"wise": {}})


def test_the_plot_is_a_png() -> None:
    image = Image.open(io.BytesIO(report_png(card(), "pets/3")))
    assert image.format == "PNG" and image.size[0] > 300
    buffer = io.BytesIO()
    no_ood = {"a": [ErPoint(0.0, 0.5, None)]}  # nothing to draw: still a valid picture
    plot_effective_robustness(no_ood, buffer)
    assert Image.open(io.BytesIO(buffer.getvalue())).format == "PNG"
