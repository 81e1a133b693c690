"""WiSE-FT: weight-space ensembles of the zero-shot and the fine-tuned model.

``merge`` is pure: two state dicts in, one out. ``sweep`` evaluates a list of mixing weights
and keeps the whole curve; ``select_alpha`` applies a stated rule to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.config import WiseConfig
from models.errors import Cancelled, ConfigError

StateDict = Mapping[str, Tensor]


def merge(zeroshot: StateDict, finetuned: StateDict, alpha: float) -> dict[str, Tensor]:
    """theta(alpha) = (1 - alpha) * theta_zeroshot + alpha * theta_finetuned, key by key.

    ``torch.lerp`` is exact at both ends, so alpha = 0 and alpha = 1 return the inputs bit for
    bit. Integer buffers (counters) cannot be averaged; they must agree or come from one end.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}", key="wise.alphas")
    if set(zeroshot) != set(finetuned):
        only_zs = sorted(set(zeroshot) - set(finetuned))
        only_ft = sorted(set(finetuned) - set(zeroshot))
        raise ValueError(f"state dicts differ in keys: only zero-shot {only_zs}, only ft {only_ft}")
    merged = {}
    for key, theta0 in zeroshot.items():
        theta1 = finetuned[key]
        if theta0.shape != theta1.shape:
            raise ValueError(
                f"{key}: shapes differ, {tuple(theta0.shape)} vs {tuple(theta1.shape)}"
            )
        merged[key] = _interpolate(theta0, theta1.to(theta0.device), alpha)
    return merged


def _interpolate(theta0: Tensor, theta1: Tensor, alpha: float) -> Tensor:
    if theta0.is_floating_point():
        return torch.lerp(theta0, theta1.to(theta0.dtype), alpha)
    return (theta1 if alpha >= 0.5 else theta0).clone()


@dataclass(frozen=True)
class CurvePoint:
    alpha: float
    metrics: dict[str, Any]  # split name -> head name -> metrics dict


def sweep(
    zeroshot: StateDict,
    finetuned: StateDict,
    alphas: Sequence[float],
    evaluate: Callable[[dict[str, Tensor]], dict[str, Any]],
    should_stop: Callable[[], bool] | None = None,
) -> list[CurvePoint]:
    """Evaluate ``evaluate(merged_state)`` at every alpha, in increasing order.

    ``should_stop`` is asked before each alpha: each one is a full evaluation, so a long list
    must not run to its end after the caller has been told to stop (raises Cancelled).
    """
    curve: list[CurvePoint] = []
    for alpha in sorted(set(alphas)):
        if should_stop is not None and should_stop():
            raise Cancelled(
                f"WiSE-FT sweep stopped after {len(curve)} of {len(set(alphas))} alphas"
            )
        curve.append(CurvePoint(alpha, evaluate(merge(zeroshot, finetuned, alpha))))
    return curve


def select_alpha(
    curve: Sequence[CurvePoint], cfg: WiseConfig, split: str = "val", head: str = "dual"
) -> float:
    """The rule, on the ID-validation ``cfg.metric`` of the served ``head``:

    - ``tolerance``: the smallest alpha within ``tolerance(...)`` of the best (a one-standard-
      error rule: a gain smaller than the validation noise does not justify moving away from
      the zero-shot model, the more robust end);
    - ``best_id_val``: the best, ties going to the smaller alpha;
    - ``fixed``: ``cfg.fixed_alpha``.

    OOD results are never looked at: they are not available in real use.
    """
    if cfg.selection == "fixed":
        return cfg.fixed_alpha
    if not curve:
        raise ConfigError("cannot select an alpha from an empty curve", key="wise.alphas")

    def score(p: CurvePoint) -> float:
        return float(p.metrics[split][head][cfg.metric] or 0.0)

    best = max(curve, key=lambda p: (score(p), -p.alpha))
    if cfg.selection == "best_id_val":
        return best.alpha
    slack = tolerance(score(best), best.metrics[split][head].get("n"), cfg.tol)
    # The small epsilon keeps a point exactly one tolerance below the best in, despite rounding.
    return min(p.alpha for p in curve if score(p) >= score(best) - slack - 1e-12)


def tolerance(best: float, n: int | None, tol: float | None) -> float:
    """``tol`` when given, else the binomial standard error sqrt(m (1 - m) / n) of the best."""
    if tol is not None:
        return tol
    if not n:
        raise ConfigError(
            "the tolerance rule needs the validation size n (or an explicit wise.tol)",
            key="wise.tol",
        )
    return math.sqrt(max(best * (1.0 - best), 0.0) / n)
