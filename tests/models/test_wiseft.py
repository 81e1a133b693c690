from __future__ import annotations

import numpy as np
import pytest
import torch

from models.config import WiseConfig
from models.errors import Cancelled, ConfigError
from models.metrics import image_record
from models.wiseft import (
    CurvePoint,
    Selection,
    merge,
    select,
    select_alpha,
    served_beta,
    sign_test,
    sweep,
    tolerance,
)


def _states() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    zs = {
        "w": torch.randn(4, 3, generator=gen),
        "b": torch.randn(3, generator=gen),
        "count": torch.tensor(7),
    }
    ft = {
        "w": torch.randn(4, 3, generator=gen),
        "b": torch.randn(3, generator=gen),
        "count": torch.tensor(7),
    }
    return zs, ft


def test_alpha_zero_and_one_return_the_endpoints_exactly() -> None:
    zs, ft = _states()
    for key in zs:
        assert torch.equal(merge(zs, ft, 0.0)[key], zs[key])
        assert torch.equal(merge(zs, ft, 1.0)[key], ft[key])


def test_merge_is_linear_in_alpha() -> None:
    zs, ft = _states()
    for alpha in (0.1, 0.3, 0.5, 0.9):
        merged = merge(zs, ft, alpha)
        expected = (1 - alpha) * zs["w"] + alpha * ft["w"]
        torch.testing.assert_close(merged["w"], expected)
    a, b = merge(zs, ft, 0.2), merge(zs, ft, 0.6)
    torch.testing.assert_close(merge(zs, ft, 0.4)["w"], (a["w"] + b["w"]) / 2)


def test_merge_does_not_modify_its_inputs() -> None:
    zs, ft = _states()
    copy = {k: v.clone() for k, v in zs.items()}
    merge(zs, ft, 0.5)
    assert all(torch.equal(copy[k], zs[k]) for k in zs)


def test_merge_refuses_different_keys_and_shapes() -> None:
    zs, ft = _states()
    with pytest.raises(ValueError, match="keys"):
        merge(zs, {**ft, "extra": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        merge(zs, {**ft, "w": torch.zeros(3, 4)}, 0.5)
    with pytest.raises(ConfigError, match="alpha"):
        merge(zs, ft, 1.5)


def _point(alpha: float, top1: float, n: int = 100) -> CurvePoint:
    return CurvePoint(
        alpha, {"val": {"dual": {"top1": top1, "n": n}}, "ood": {"dual": {"top1": 1.0}}}
    )


def test_selection_takes_best_id_val_and_ties_to_smaller_alpha() -> None:
    curve = [_point(0.0, 0.5), _point(0.5, 0.8), _point(0.7, 0.8), _point(1.0, 0.7)]
    assert select_alpha(curve, WiseConfig(selection="best_id_val")) == 0.5
    assert select_alpha(curve, WiseConfig(selection="fixed", fixed_alpha=0.3)) == 0.3


def test_sweep_keeps_the_whole_curve_in_order() -> None:
    zs, ft = _states()
    curve = sweep(zs, ft, [1.0, 0.0, 0.5, 0.5], lambda s: {"val": float(s["w"].sum())})
    assert [p.alpha for p in curve] == [0.0, 0.5, 1.0]
    assert curve[0].metrics["val"] == pytest.approx(float(zs["w"].sum()))


def test_tolerance_takes_the_smallest_alpha_within_tol_of_the_best() -> None:
    # ID validation creeps up towards alpha 1; 0.25 is within 0.02 of the best, 0.0 is not.
    curve = [_point(0.0, 0.70), _point(0.25, 0.89), _point(0.5, 0.90), _point(1.0, 0.905)]
    assert select_alpha(curve, WiseConfig(selection="best_id_val")) == 1.0
    assert select_alpha(curve, WiseConfig(selection="tolerance", tol=0.02)) == 0.25
    assert select_alpha(curve, WiseConfig(selection="tolerance", tol=0.01)) == 0.5
    assert select_alpha(curve, WiseConfig(selection="tolerance", tol=0.0)) == 1.0
    assert select_alpha(curve, WiseConfig(selection="tolerance", tol=0.3)) == 0.0


def test_tolerance_defaults_to_one_binomial_standard_error() -> None:
    # Best 0.9 on n = 100: SE = sqrt(0.9 * 0.1 / 100) = 0.03. 0.871 is in, 0.869 is out.
    assert tolerance(0.9, 100, None) == pytest.approx(0.03)
    inside = [_point(0.0, 0.5), _point(0.3, 0.871), _point(1.0, 0.9)]
    outside = [_point(0.0, 0.5), _point(0.3, 0.869), _point(1.0, 0.9)]
    rule = WiseConfig(selection="tolerance", heads=("dual",))
    assert select_alpha(inside, rule) == 0.3
    assert select_alpha(outside, rule) == 1.0
    # A larger validation split is less noisy: the same curve keeps alpha 1.
    larger = [_point(a.alpha, a.metrics["val"]["dual"]["top1"], n=10_000) for a in inside]
    assert select_alpha(larger, rule) == 1.0
    with pytest.raises(ConfigError, match="wise.tol"):
        select_alpha([CurvePoint(1.0, {"val": {"dual": {"top1": 0.9}}})], rule)


def test_sweep_asks_should_stop_before_each_alpha() -> None:
    """Issue 11 (4): a cancel during a long sweep used to wait for every alpha to be evaluated."""
    zs, ft = _states()
    evaluated: list[float] = []

    def evaluate(state: dict[str, torch.Tensor]) -> dict[str, float]:
        evaluated.append(float(state["w"].sum()))
        return {}

    alphas = [i / 100 for i in range(101)]
    with pytest.raises(Cancelled, match="after 3 of 101 alphas"):
        sweep(zs, ft, alphas, evaluate, should_stop=lambda: len(evaluated) >= 3)
    assert len(evaluated) == 3
    assert len(sweep(zs, ft, alphas[:5], evaluate, should_stop=lambda: False)) == 5


# ---------------------------------------------------------------------------------------------
# Continuous metrics, the paired rule, the served head


def _rich(alpha: float, hits: list[int], nll: float, heads: tuple[str, ...] = ("dual",)) -> dict:
    values = np.asarray(hits, dtype=bool)
    probs = np.stack([values.astype(float) * 0.6 + 0.2, 1 - (values.astype(float) * 0.6 + 0.2)], 1)
    record = image_record(probs, np.zeros(len(hits), dtype=int))
    return {
        h: {
            "top1": float(values.mean()),
            "n": len(hits),
            "nll": nll,
            "true_prob": 1.0 - nll / 10,
            "images": record,
        }
        for h in heads
    }


def test_continuous_metrics_pick_the_lowest_nll_and_the_highest_true_prob() -> None:
    curve = [
        CurvePoint(0.0, {"val": {"dual": {"top1": 0.9, "nll": 0.40, "true_prob": 0.70}}}),
        CurvePoint(0.5, {"val": {"dual": {"top1": 0.9, "nll": 0.30, "true_prob": 0.72}}}),
        CurvePoint(1.0, {"val": {"dual": {"top1": 0.9, "nll": 0.35, "true_prob": 0.80}}}),
    ]
    assert select_alpha(curve, WiseConfig(selection="best_id_val", metric="nll")) == 0.5
    assert select_alpha(curve, WiseConfig(selection="best_id_val", metric="true_prob")) == 1.0
    # tolerance on NLL: within 0.06 of the lowest (0.30), the smallest alpha is 0.5 (0.40 is out)
    cfg = WiseConfig(selection="tolerance", metric="nll", tol=0.06)
    assert select_alpha(curve, cfg) == 0.5


def test_tolerance_on_a_continuous_metric_needs_an_explicit_tol() -> None:
    with pytest.raises(ConfigError, match="tol"):
        WiseConfig(selection="tolerance", metric="nll")
    with pytest.raises(ConfigError, match="metric"):
        WiseConfig(selection="paired", metric="macro_f1")
    with pytest.raises(ConfigError, match="heads"):
        WiseConfig(heads=("dual", "dual"))
    with pytest.raises(ConfigError, match="heads"):
        WiseConfig(heads=("served",))


def test_sign_test_is_mcnemars_exact_one_sided_p_value() -> None:
    ref = np.array([1, 1, 1, 1, 0, 1], dtype=bool)
    other = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    # discordant: ref alone 3, other alone 1 -> P(X >= 3 | n=4) = (4 + 1) / 16
    assert sign_test(ref, other) == pytest.approx(5 / 16)
    assert sign_test(ref, ref) == 1.0
    # other better than ref: P(X >= 1 | n=4) = 15/16
    assert sign_test(other, ref) == pytest.approx(15 / 16)


def test_paired_rule_breaks_a_top1_tie_by_nll_and_excludes_a_significantly_worse_point() -> None:
    n = 40
    best = [1] * 36 + [0] * 4  # 0.90
    tied = [1] * 35 + [0] * 5  # 0.875: one image worse, indistinguishable
    worse = [0] * 10 + [1] * 26 + [0] * 4  # 0.65: right on 10 fewer of best's images
    assert len(best) == len(tied) == len(worse) == n
    curve = [
        CurvePoint(0.0, {"val": _rich(0.0, worse, nll=0.10)}),  # lowest NLL but worse top-1
        CurvePoint(0.5, {"val": _rich(0.5, best, nll=0.40)}),
        CurvePoint(1.0, {"val": _rich(1.0, tied, nll=0.30)}),
    ]
    # best top-1 picks 0.5; paired drops alpha 0 (p = 2^-10) and takes the lower NLL of the rest
    assert select_alpha(curve, WiseConfig(selection="best_id_val")) == 0.5
    assert select_alpha(curve, WiseConfig(selection="paired")) == 1.0
    assert select_alpha(curve, WiseConfig(selection="paired", tie_break="smallest")) == 0.5
    assert select_alpha(curve, WiseConfig(selection="paired", tie_break="largest")) == 1.0
    # the one-image loss has p = 1/2: at a level of 0.6 it counts as worse, and the best stays
    assert select_alpha(curve, WiseConfig(selection="paired", paired_level=0.6)) == 0.5
    # the tolerance rule's binomial band (0.047) keeps 0.875 too, and takes the smaller alpha
    assert select_alpha(curve, WiseConfig(selection="tolerance")) == 0.5


def test_paired_rule_needs_per_image_hits() -> None:
    curve = [_point(0.0, 0.5), _point(1.0, 0.6)]
    with pytest.raises(ConfigError, match="per-image"):
        select_alpha(curve, WiseConfig(selection="paired"))


def test_head_and_alpha_are_chosen_together_by_the_same_rule() -> None:
    curve = [
        CurvePoint(
            0.0, {"val": {"dual": {"top1": 0.80, "n": 300}, "default": {"top1": 0.81, "n": 300}}}
        ),
        CurvePoint(
            1.0, {"val": {"dual": {"top1": 0.90, "n": 300}, "default": {"top1": 0.93, "n": 300}}}
        ),
    ]
    both = ("dual", "default")
    assert select(curve, WiseConfig(selection="best_id_val", heads=both)) == Selection(
        1.0, "default"
    )
    # one head only: as before
    assert select(curve, WiseConfig(selection="best_id_val", heads=("dual",))) == Selection(
        1.0, "dual"
    )
    # at equal scores the earlier head wins
    tie = [CurvePoint(1.0, {"val": {"dual": {"top1": 0.9}, "default": {"top1": 0.9}}})]
    assert select(tie, WiseConfig(selection="best_id_val", heads=both)).head == "dual"
    assert select(tie, WiseConfig(selection="best_id_val", heads=both[::-1])).head == "default"
    # fixed alpha: the head with the best metric there
    assert select(curve, WiseConfig(selection="fixed", fixed_alpha=0.0, heads=both)) == Selection(
        0.0, "default"
    )
    with pytest.raises(ConfigError, match="fixed_alpha"):
        select(curve, WiseConfig(selection="fixed", fixed_alpha=0.5, heads=both))


def test_served_beta_of_each_head() -> None:
    assert served_beta("dual", 0.3) == 0.3
    assert served_beta("default", 0.3) == 1.0
    assert served_beta("concept", 0.3) == 0.0
    with pytest.raises(ConfigError):
        served_beta("other", 0.5)


def test_paired_rule_with_an_end_as_tie_break_needs_no_continuous_metric() -> None:
    hits = [1] * 18 + [0] * 2
    record = image_record(np.eye(2)[[0 if h else 1 for h in hits]], np.zeros(20, dtype=int))
    curve = [
        CurvePoint(a, {"val": {"dual": {"top1": 0.9, "n": 20, "images": record}}})
        for a in (0.0, 0.5, 1.0)
    ]
    assert select_alpha(curve, WiseConfig(selection="paired", tie_break="largest")) == 1.0
    assert select_alpha(curve, WiseConfig(selection="paired", tie_break="smallest")) == 0.0
    with pytest.raises(ConfigError, match="nll"):
        select_alpha(curve, WiseConfig(selection="paired"))
