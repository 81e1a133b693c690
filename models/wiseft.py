"""WiSE-FT: weight-space ensembles of the zero-shot and the fine-tuned model.

``merge`` is pure: two state dicts in, one out. ``sweep`` evaluates a list of mixing weights
and keeps the whole curve; ``select`` applies a stated rule to it (the alpha, and the head to
serve), ``select_alpha`` for one head; ``served_beta`` is the dual-inference beta of a head.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.config import CONTINUOUS_METRICS, LOWER_IS_BETTER, SERVED_HEADS, WiseConfig
from models.errors import Cancelled, ConfigError
from models.metrics import unpack_hits

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


@dataclass(frozen=True)
class Selection:
    """What a rule chose: the WiSE-FT alpha and the head to serve (models.config.SERVED_HEADS)."""

    alpha: float
    head: str


def select_alpha(
    curve: Sequence[CurvePoint], cfg: WiseConfig, split: str = "val", head: str = "dual"
) -> float:
    """The alpha ``cfg``'s rule picks for ``head`` alone (``select`` with one head)."""
    return select(curve, cfg, split, heads=(head,)).alpha


def select(
    curve: Sequence[CurvePoint],
    cfg: WiseConfig,
    split: str = "val",
    heads: Sequence[str] | None = None,
) -> Selection:
    """The rule, on the ID-validation ``split`` of each candidate (alpha, head), ``heads``
    (default ``cfg.heads``) in order of preference:

    - ``tolerance``: the smallest alpha within ``tolerance(...)`` of the best ``cfg.metric`` (a
      one-standard-error rule: a gain smaller than the validation noise does not justify moving
      away from the zero-shot model, the more robust end);
    - ``best_id_val``: the best ``cfg.metric`` (lowest for ``nll``), ties to the smaller alpha;
    - ``fixed``: ``cfg.fixed_alpha`` (with several heads, the best ``cfg.metric`` there);
    - ``paired``: a noise-aware tie rule. The candidates are every point whose top-1 a one-sided
      exact sign test on the same validation images (McNemar's, on the images exactly one of
      the two gets right) does not find worse than the best point's at ``cfg.paired_level``;
      among them ``cfg.tie_break`` decides: the lowest NLL, the highest mean true-class
      probability, or the largest or smallest alpha. Why: on a few hundred images top-1 moves
      in steps of 1/n and adjacent alphas differ on a handful of images, so "the best top-1"
      is often one image's luck (issue 24: 0.937 at alpha 0.25 and at 0.75), while the
      tolerance rule's band is a bound for one point, not for a difference of two points
      measured on the same images (their errors are correlated, so a paired test is both
      fairer and sharper). Inside the set the test cannot separate, top-1 carries no more
      information; NLL and the true class's probability are continuous per image, so they
      rank the candidates by how much probability they put on the right answer, measured on
      the same images. It needs each point's per-image validation hits (the metrics'
      ``images`` record, kept by the pipeline whenever this rule is chosen).

    Ties between heads go to the earlier head in ``heads``. OOD results are never looked at:
    they are not available in real use.
    """
    heads = tuple(heads or cfg.heads)
    if cfg.selection == "fixed" and len(heads) == 1:
        return Selection(cfg.fixed_alpha, heads[0])
    if not curve:
        raise ConfigError("cannot select an alpha from an empty curve", key="wise.alphas")
    points = [p for p in curve if cfg.selection != "fixed" or p.alpha == cfg.fixed_alpha]
    if not points:
        raise ConfigError(
            f"fixed_alpha {cfg.fixed_alpha} is not on the evaluated curve", key="wise.fixed_alpha"
        )
    rank = {h: i for i, h in enumerate(heads)}
    candidates = [(p, h) for p in points for h in heads]

    def metrics(c: tuple[CurvePoint, str]) -> Mapping[str, Any]:
        try:
            return c[0].metrics[split][c[1]]
        except KeyError:
            raise ConfigError(
                f"no {split!r} metrics of the {c[1]!r} head at alpha {c[0].alpha}",
                key="wise.heads",
            ) from None

    def oriented(c: tuple[CurvePoint, str], metric: str) -> float:
        value = metrics(c).get(metric)
        if value is None:
            if metric in CONTINUOUS_METRICS:
                raise ConfigError(f"the curve has no {metric!r} to select by", key="wise.metric")
            value = 0.0
        return -float(value) if metric in LOWER_IS_BETTER else float(value)

    def score(c: tuple[CurvePoint, str]) -> float:
        return oriented(c, cfg.metric)

    def prefer(c: tuple[CurvePoint, str]) -> tuple[float, int]:
        return (-c[0].alpha, -rank[c[1]])  # at equal score: the smaller alpha, the earlier head

    if cfg.selection == "paired":
        return _paired(candidates, cfg, metrics, oriented, rank)
    best = max(candidates, key=lambda c: (score(c), *prefer(c)))
    if cfg.selection in ("best_id_val", "fixed"):
        return Selection(best[0].alpha, best[1])
    slack = tolerance(score(best), metrics(best).get("n"), cfg.tol)
    # The small epsilon keeps a point exactly one tolerance below the best in, despite rounding.
    kept = [c for c in candidates if score(c) >= score(best) - slack - 1e-12]
    chosen = min(kept, key=lambda c: (c[0].alpha, rank[c[1]]))
    return Selection(chosen[0].alpha, chosen[1])


Candidate = tuple[CurvePoint, str]


def _paired(
    candidates: Sequence[Candidate],
    cfg: WiseConfig,
    metrics: Callable[[Candidate], Mapping[str, Any]],
    oriented: Callable[[Candidate, str], float],
    rank: Mapping[str, int],
) -> Selection:
    def hits(c: Candidate) -> np.ndarray:
        record = metrics(c).get("images")
        if not record:
            raise ConfigError(
                "the paired rule needs per-image validation hits (the metrics' 'images' "
                f"record), missing at alpha {c[0].alpha} ({c[1]} head)",
                key="wise.selection",
            )
        return unpack_hits(record)

    right = {id(c): hits(c) for c in candidates}
    top1 = {id(c): float(right[id(c)].mean()) for c in candidates}
    by_metric = cfg.tie_break not in ("largest", "smallest")

    def reference_key(c: Candidate) -> tuple[float, ...]:
        # The best top-1; ties: the tie-break metric when it is one, then the smaller alpha.
        tie = oriented(c, cfg.tie_break) if by_metric else 0.0
        return (top1[id(c)], tie, -c[0].alpha, -rank[c[1]])

    best = max(candidates, key=reference_key)
    kept = [
        c
        for c in candidates
        if c is best or sign_test(right[id(best)], right[id(c)]) >= cfg.paired_level
    ]
    if cfg.tie_break == "largest":
        chosen = max(kept, key=lambda c: (c[0].alpha, -rank[c[1]]))
    elif cfg.tie_break == "smallest":
        chosen = min(kept, key=lambda c: (c[0].alpha, rank[c[1]]))
    else:
        chosen = max(kept, key=lambda c: (oriented(c, cfg.tie_break), -c[0].alpha, -rank[c[1]]))
    return Selection(chosen[0].alpha, chosen[1])


def sign_test(reference: np.ndarray, other: np.ndarray) -> float:
    """One-sided exact p-value that ``other`` is less often right than ``reference`` on the
    same images: of the n images exactly one of them gets right, ``reference`` alone gets b;
    p = P(X >= b) for X ~ Binomial(n, 1/2) (McNemar's exact test). 1 when they never differ."""
    if reference.shape != other.shape:
        raise ValueError(f"paired hits of different sizes: {reference.shape} vs {other.shape}")
    b = int(np.sum(reference & ~other))
    n = b + int(np.sum(other & ~reference))
    if n == 0:
        return 1.0
    # Exact in integers: sum of C(n, k) for k >= b, over 2^n.
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n


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


def served_beta(head: str, beta: float) -> float:
    """The dual-inference beta that serves ``head`` (``beta``: the configured one, for dual)."""
    if head not in SERVED_HEADS:
        raise ConfigError(f"head must be one of {list(SERVED_HEADS)}, got {head!r}", "wise.heads")
    return {"dual": beta, "default": 1.0, "concept": 0.0}[head]
