from __future__ import annotations

import pytest
import torch

from models.config import WiseConfig
from models.errors import Cancelled, ConfigError
from models.wiseft import CurvePoint, merge, select_alpha, sweep, tolerance


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
    assert select_alpha(inside, WiseConfig()) == 0.3
    assert select_alpha(outside, WiseConfig()) == 1.0
    # A larger validation split is less noisy: the same curve keeps alpha 1.
    larger = [_point(a.alpha, a.metrics["val"]["dual"]["top1"], n=10_000) for a in inside]
    assert select_alpha(larger, WiseConfig()) == 1.0
    with pytest.raises(ConfigError, match="wise.tol"):
        select_alpha([CurvePoint(1.0, {"val": {"dual": {"top1": 0.9}}})], WiseConfig())


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
