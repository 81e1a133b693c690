"""Evaluation metrics as pure functions of predicted probabilities and labels.

Everything is computed in float64 on the CPU, and ``evaluate_probs`` returns plain Python
numbers so results can go straight into JSON (model cards, API responses).
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from models.errors import DataError

ArrayLike = Tensor | np.ndarray | Sequence[Any]

# Probabilities are clamped before the log so a confidently wrong sample gives a large but
# finite NLL (JSON has no infinity).
NLL_FLOOR = 1e-12


def evaluate_probs(
    probs: ArrayLike,
    labels: ArrayLike,
    classnames: Sequence[str],
    groups: Sequence[str | None] | None = None,
    n_bins: int = 15,
    ignore_groups: Collection[str] = (),
    macro_f1_over: Literal["present", "labels"] = "present",
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class and per-group accuracy, ECE, NLL and the mean probability
    of the true class (``true_prob``) of ``probs`` [N, C].

    Samples whose group is None count everywhere but in the group metrics. ``ignore_groups``
    are reported in ``group_acc`` but left out of ``worst_group_acc`` (WILDS leaves FMoW's
    region "Other" out of its worst-region accuracy). ``macro_f1_over``: see ``macro_f1``
    (``labels`` for WILDS' iWildCam).
    """
    p, y = _checked(probs, labels, len(classnames), groups)
    preds = p.argmax(dim=1)
    correct = (preds == y).double()
    result: dict[str, Any] = {
        "n": int(y.numel()),
        "top1": float(correct.mean()),
        "macro_f1": macro_f1(preds, y, len(classnames), over=macro_f1_over),
        "per_class_acc": _per_class_acc(correct, y, classnames),
        "worst_group_acc": None,
        "ece": expected_calibration_error(p, y, n_bins),
        "nll": _nll(p, y),
        "true_prob": float(true_class_probs(p, y).mean()),
    }
    if groups is not None and any(g is not None for g in groups):
        group_acc = _group_acc(correct, groups)
        kept = [acc for group, acc in group_acc.items() if group not in ignore_groups]
        result["group_acc"] = group_acc
        result["worst_group_acc"] = min(kept) if kept else None
    return result


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """ECE over ``n_bins`` equal-width confidence bins (lo, hi], confidence = max probability.

    ECE = sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p, y = _as_float(probs), _as_long(labels)
    confidence, preds = p.max(dim=1)
    inner_edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    # right=False puts a confidence equal to an edge in the bin that edge closes: (lo, hi].
    bins = torch.bucketize(confidence, inner_edges, right=False)
    # |bin| * |acc - conf| is |sum over the bin of (correct - confidence)|, so one scatter does.
    gaps = torch.zeros(n_bins, dtype=torch.float64)
    gaps.index_add_(0, bins, (preds == y).double() - confidence)
    return float(gaps.abs().sum() / max(y.numel(), 1))


def macro_f1(
    preds: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    over: Literal["present", "labels"] = "present",
) -> float:
    """Mean per-class F1 over the classes that occur.

    ``over="present"`` (default) averages over classes present in ``labels`` or ``preds``, like
    sklearn's ``f1_score(labels, preds, average="macro")``: a class never seen nor predicted
    says nothing about the model and would only drag the mean to 0. ``over="labels"`` averages
    over classes present in ``labels`` only, as WILDS' iWildCam evaluation does.
    """
    p, y = _as_long(preds).flatten(), _as_long(labels).flatten()
    predicted = torch.bincount(p, minlength=num_classes).double()
    actual = torch.bincount(y, minlength=num_classes).double()
    hits = torch.bincount(y[p == y], minlength=num_classes).double()
    used = actual > 0 if over == "labels" else (actual + predicted) > 0
    if not bool(used.any()):
        return 0.0
    # F1 = 2TP / (2TP + FP + FN), and 2TP + FP + FN = (#predicted) + (#actual).
    f1 = 2 * hits[used] / (predicted[used] + actual[used])
    return float(f1.mean())


def _checked(
    probs: ArrayLike, labels: ArrayLike, num_classes: int, groups: Sequence[str | None] | None
) -> tuple[Tensor, Tensor]:
    p, y = _as_float(probs), _as_long(labels).flatten()
    if p.ndim != 2 or p.shape[1] != num_classes:
        message = f"probabilities of shape {tuple(p.shape)} do not match {num_classes} classes"
        raise DataError(message)
    if p.shape[0] != y.numel() or (groups is not None and len(groups) != y.numel()):
        raise DataError(f"{p.shape[0]} predictions for {y.numel()} labels")
    if y.numel() == 0:
        raise DataError("nothing to evaluate: no samples")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(
            f"labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}"
        )
    return p, y


def _per_class_acc(
    correct: Tensor, labels: Tensor, classnames: Sequence[str]
) -> dict[str, float | None]:
    hits = torch.bincount(labels, weights=correct, minlength=len(classnames))
    totals = torch.bincount(labels, minlength=len(classnames))
    return {
        name: float(hits[i] / totals[i]) if totals[i] > 0 else None
        for i, name in enumerate(classnames)
    }


def _group_acc(correct: Tensor, groups: Sequence[str | None]) -> dict[str, float]:
    totals: dict[str, list[float]] = {}
    for value, group in zip(correct.tolist(), groups, strict=True):
        if group is not None:
            totals.setdefault(str(group), []).append(value)
    return {group: sum(values) / len(values) for group, values in sorted(totals.items())}


def true_class_probs(probs: ArrayLike, labels: ArrayLike) -> Tensor:
    """The probability each sample gives its true class, [N]."""
    p, y = _as_float(probs), _as_long(labels).flatten()
    return p.gather(1, y[:, None]).squeeze(1)


def _nll(probs: Tensor, labels: Tensor) -> float:
    return float(-true_class_probs(probs, labels).clamp_min(NLL_FLOOR).log().mean())


# ---------------------------------------------------------------------------------------------
# Per-image records, packed for JSON (model cards, benchmark results)


def image_record(probs: ArrayLike, labels: ArrayLike, true_prob: bool = False) -> dict[str, Any]:
    """Per image of one split: whether the argmax is right (``hits``, bit-packed hex: 300
    images take 76 characters) and, with ``true_prob``, the true class's probability as
    float16 (``true_prob``, base64: 400 characters for 300 images; about 3 significant digits,
    enough to recompute the mean NLL and ``true_prob`` to 1e-3). ``unpack_hits`` and
    ``unpack_true_prob`` read them back."""
    p, y = _as_float(probs), _as_long(labels).flatten()
    record: dict[str, Any] = {"n": int(y.numel()), "hits": pack_bits(p.argmax(dim=1) == y)}
    if true_prob:
        values = true_class_probs(p, y).numpy().astype("<f2")
        record["true_prob"] = base64.b64encode(values.tobytes()).decode("ascii")
    return record


def pack_bits(bits: ArrayLike) -> str:
    """0/1 per item as hex of packed bits (most significant bit first)."""
    return np.packbits(np.asarray(bits, dtype=bool)).tobytes().hex()


def unpack_bits(packed: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), dtype=np.uint8))
    if bits.size < n or bits.size - n >= 8:
        raise DataError(f"packed bits hold {bits.size} values, not {n}")
    return bits[:n].astype(bool)


def unpack_hits(record: Mapping[str, Any]) -> np.ndarray:
    """``image_record``'s hits as a bool array [n]."""
    return unpack_bits(record["hits"], int(record["n"]))


def unpack_true_prob(record: Mapping[str, Any]) -> np.ndarray:
    """``image_record``'s true-class probabilities as float64 [n]."""
    raw = base64.b64decode(record["true_prob"])
    values = np.frombuffer(raw, dtype="<f2").astype(np.float64)
    if values.size != int(record["n"]):
        raise DataError(f"{values.size} stored probabilities for {record['n']} images")
    return values


def _as_float(values: ArrayLike) -> Tensor:
    return torch.as_tensor(values).detach().to("cpu", torch.float64)


def _as_long(values: ArrayLike) -> Tensor:
    return torch.as_tensor(values).detach().to("cpu", torch.long)
