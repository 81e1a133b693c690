"""WiSE-FT: weight-space ensembles of the zero-shot and the fine-tuned model.

``merge`` is pure: two state dicts in, one out. ``sweep`` evaluates a list of mixing weights
and keeps the whole curve; ``select_alpha`` applies a stated rule to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from models.config import WiseConfig
from models.errors import ConfigError

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
) -> list[CurvePoint]:
    """Evaluate ``evaluate(merged_state)`` at every alpha, in increasing order."""
    return [CurvePoint(a, evaluate(merge(zeroshot, finetuned, a))) for a in sorted(set(alphas))]


def select_alpha(
    curve: Sequence[CurvePoint], cfg: WiseConfig, split: str = "val", head: str = "dual"
) -> float:
    """The rule: ``fixed`` takes ``cfg.fixed_alpha``; ``best_id_val`` the alpha with the best
    ID-validation ``cfg.metric`` of the served ``head``, ties going to the smaller alpha (nearer
    the zero-shot model, the more robust end). OOD results are never looked at: they are not
    available in real use.
    """
    if cfg.selection == "fixed":
        return cfg.fixed_alpha
    if not curve:
        raise ConfigError("cannot select an alpha from an empty curve", key="wise.alphas")
    best = max(curve, key=lambda p: (p.metrics[split][head][cfg.metric] or 0.0, -p.alpha))
    return best.alpha
