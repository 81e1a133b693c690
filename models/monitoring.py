"""Shift monitoring without labels: a reference profile from a version's ID validation split,
and per-window answers on live traffic (is it drifting? how accurate is the model on it?).

Everything here is pure numerics on per-image statistics (no web framework, no database):

- ``served_pass``: the served (dual) probabilities of one forward pass, packed with what the
  monitor reads from the same pass: the default and concept heads' predictions and the image
  embedding. No second forward pass; ``unpack`` takes them apart again.
- ``image_stats``: per image, the served head's max probability, margin, entropy, prediction,
  the two heads' predictions and the embedding projected on the profile's PCA basis.
- ``build_profile``: the reference (with labels) a version is compared against.
- ``judge_window``: a window's drift test and label-free accuracy estimate, each with its
  uncertainty, or "not enough traffic yet" below ``min_window`` images.

Drift is three two-sample tests of the window against the reference, combined with
Bonferroni's correction (the combined p-value is valid whatever their dependence):

1. MMD (Gretton et al., JMLR 2012) with a Gaussian kernel on the embeddings projected to
   ``PCA_DIMS`` dimensions, its p-value from a permutation test: the test that "Failing
   Loudly" (Rabanser et al., NeurIPS 2019) found the most powerful for multivariate shift on a
   low-dimensional representation, and exact in finite samples.
2. Kolmogorov-Smirnov on the served head's max probability (a univariate shift of what the
   model is sure of; Rabanser et al.'s BBSD-style test on the softmax output).
3. Fisher's exact test, one-sided, that the default and concept heads disagree more often than
   on the reference: the two heads read different features (templates vs core-feature
   descriptions), and their disagreement rises when the images leave the training distribution.

A window is flagged when the combined p-value is below ``alpha``: under no shift (windows
drawn as the reference was), the false-alarm rate is at most ``alpha``. The drift score is
``-log10`` of the combined p-value (higher is more drift), so it ranks windows for an AUROC.

Accuracy is estimated with average thresholded confidence (ATC, Garg et al., ICLR 2022) on the
negative entropy of the served head (their ATC-NE, the better of their two scores): a threshold
``t`` fitted on the labelled reference so that the share of reference images scoring above it
equals the reference accuracy; a window's estimate is its share above ``t``. Its interval is a
bootstrap over both the reference (the threshold's noise) and the window (sampling noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import stats
from torch import Tensor
from torch.utils.data import DataLoader

from models.evaluation import check_stop
from models.heads import Classifier, blend

# Dimensions of the embedding summary: enough to carry a shift (Rabanser et al. reduce to 32
# or fewer), few enough that a kernel test on hundreds of points stays in milliseconds.
PCA_DIMS = 16
# Reference points the MMD test compares a window with (a random subset of the split).
REFERENCE_POINTS = 500
PERMUTATIONS = 500
BOOTSTRAPS = 200
# Per-image statistics kept in a profile at most (a larger split is subsampled).
MAX_REFERENCE = 5000
TESTS = ("mmd", "ks_confidence", "disagreement")
# The columns ``image_stats`` returns before the projection.
STAT_COLUMNS = ("confidence", "margin", "entropy", "pred", "default_pred", "concept_pred")

Array = NDArray[np.float64]


@torch.no_grad()
def served_pass(classifier: Classifier, images: Tensor) -> Tensor:
    """One forward pass: (N, C + 2 + D) = the dual probabilities (exactly ``classifier(images)``),
    the default and concept heads' argmax, the normalised embedding; on the CPU, float."""
    features = classifier.image_features(images)
    default = classifier.logits_from_features(features, "default")
    concept = classifier.logits_from_features(features, "concept")
    probs = blend(default, concept, classifier.beta)
    preds = torch.stack([default.argmax(dim=1), concept.argmax(dim=1)], dim=1).float()
    return torch.cat([probs.float(), preds, features.float()], dim=1).cpu()


def unpack(out: Tensor, classes: int) -> tuple[Tensor, Tensor | None]:
    """(probabilities, the rest or None) of a ``served_pass`` output (or of bare probabilities)."""
    if out.shape[1] == classes:
        return out, None
    return out[:, :classes], out[:, classes:]


def image_stats(
    probs: Array, default_pred: Array, concept_pred: Array, features: Array, pca: Pca
) -> Array:
    """(N, 6 + k): the ``STAT_COLUMNS`` of each image, then its projected embedding."""
    probs = np.asarray(probs, dtype=np.float64)
    top2 = -np.sort(-probs, axis=1)[:, :2] if probs.shape[1] > 1 else np.c_[probs, probs * 0]
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=1)
    columns = [
        top2[:, 0],
        top2[:, 0] - top2[:, 1],
        entropy,
        probs.argmax(axis=1),
        np.asarray(default_pred, dtype=np.float64),
        np.asarray(concept_pred, dtype=np.float64),
    ]
    return np.c_[np.stack(columns, axis=1), pca.project(features)]


@dataclass(frozen=True)
class Pca:
    mean: Array
    components: Array  # (k, D)

    @classmethod
    def fit(cls, features: Array, dims: int = PCA_DIMS) -> Pca:
        x = np.asarray(features, dtype=np.float64)
        mean = x.mean(axis=0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return cls(mean, vt[: min(dims, vt.shape[0])])

    def project(self, features: Array) -> Array:
        x = np.asarray(features, dtype=np.float64)
        if x.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"embeddings of width {x.shape[1]}, the profile's are {self.mean.shape[0]}"
            )
        return np.asarray((x - self.mean) @ self.components.T)


@dataclass(frozen=True)
class Profile:
    """The reference of one version: per-image statistics of its ID validation split (``stats``,
    as ``image_stats``), their labels, the PCA basis, and what the tests need precomputed."""

    classes: tuple[str, ...]
    pca: Pca
    stats: Array
    labels: Array
    bandwidth: float  # the Gaussian kernel's, by the median heuristic on the reference
    reference: Array  # the MMD test's reference points (projected embeddings)
    atc_threshold: float
    atc_thresholds: Array  # the threshold refitted on bootstrap resamples of the reference

    @property
    def accuracy(self) -> float:
        return float((self.stats[:, 3] == self.labels).mean())

    @property
    def disagreement(self) -> float:
        return float((self.stats[:, 4] != self.stats[:, 5]).mean())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": 1,
            "classes": list(self.classes),
            "pca": {"mean": self.pca.mean.tolist(), "components": self.pca.components.tolist()},
            "stats": self.stats.tolist(),
            "labels": self.labels.astype(int).tolist(),
            "bandwidth": self.bandwidth,
            "reference": self.reference.tolist(),
            "atc_threshold": self.atc_threshold,
            "atc_thresholds": self.atc_thresholds.tolist(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        pca = data["pca"]
        return cls(
            classes=tuple(data["classes"]),
            pca=Pca(np.asarray(pca["mean"], float), np.asarray(pca["components"], float)),
            stats=np.asarray(data["stats"], float),
            labels=np.asarray(data["labels"], float),
            bandwidth=float(data["bandwidth"]),
            reference=np.asarray(data["reference"], float),
            atc_threshold=float(data["atc_threshold"]),
            atc_thresholds=np.asarray(data["atc_thresholds"], float),
        )

    def summary(self) -> dict[str, Any]:
        """What a report shows: the reference's size, accuracy, disagreement and confidence."""
        confidence = self.stats[:, 0]
        return {
            "n": len(self.labels),
            "accuracy": self.accuracy,
            "disagreement": self.disagreement,
            "confidence": _quantiles(confidence),
            "entropy": _quantiles(self.stats[:, 2]),
            "margin": _quantiles(self.stats[:, 1]),
            "class_frequencies": class_frequencies(self.stats[:, 3], len(self.classes)),
            "pca_dims": int(self.pca.components.shape[0]),
            "atc_threshold": self.atc_threshold,
        }


def _quantiles(values: Array) -> dict[str, float]:
    q = np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {
        "mean": float(values.mean()),
        **{f"q{p}": float(v) for p, v in zip((10, 25, 50, 75, 90), q, strict=True)},
    }


def class_frequencies(preds: Array, classes: int) -> list[float]:
    counts = np.bincount(np.asarray(preds, dtype=np.int64), minlength=classes)[:classes]
    return (counts / max(1, counts.sum())).tolist()


def atc_score(stats: Array) -> Array:
    """ATC-NE's score: the served head's negative entropy."""
    return np.asarray(-stats[:, 2])


def atc_fit(scores: Array, correct: Array) -> float:
    """The threshold whose share of ``scores`` above it equals the accuracy (Garg et al., eq. 1)."""
    accuracy = float(np.mean(correct))
    if accuracy >= 1.0:  # every score above it; finite, so the profile stays valid JSON
        return float(np.min(scores)) - 1.0
    return float(np.quantile(scores, 1.0 - accuracy))


def build_profile(
    classes: Sequence[str],
    probs: Array,
    default_pred: Array,
    concept_pred: Array,
    features: Array,
    labels: Array,
    seed: int = 0,
) -> Profile:
    """The reference profile of a labelled ID split (from one ``served_pass`` over it)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if n < 2:
        raise ValueError("a reference profile needs at least 2 labelled images")
    keep = np.sort(rng.choice(n, MAX_REFERENCE, replace=False)) if n > MAX_REFERENCE else None
    if keep is not None:
        probs, default_pred, concept_pred = probs[keep], default_pred[keep], concept_pred[keep]
        features, labels = features[keep], labels[keep]
    pca = Pca.fit(features)
    table = image_stats(probs, default_pred, concept_pred, features, pca)
    labels = np.asarray(labels, dtype=np.float64)
    projected = table[:, len(STAT_COLUMNS) :]
    points = min(REFERENCE_POINTS, len(projected))
    reference = projected[np.sort(rng.choice(len(projected), points, replace=False))]
    scores, correct = atc_score(table), table[:, 3] == labels
    resampled = rng.integers(0, len(labels), size=(BOOTSTRAPS, len(labels)))
    thresholds = np.array([atc_fit(scores[i], correct[i]) for i in resampled])
    return Profile(
        classes=tuple(classes),
        pca=pca,
        stats=table,
        labels=labels,
        bandwidth=median_bandwidth(reference),
        reference=reference,
        atc_threshold=atc_fit(scores, correct),
        atc_thresholds=thresholds,
    )


def median_bandwidth(points: Array) -> float:
    d2 = _sq_distances(points, points)
    upper = d2[np.triu_indices(len(points), k=1)]
    median = float(np.median(upper)) if upper.size else 1.0
    return math.sqrt(median / 2) if median > 0 else 1.0


def _sq_distances(a: Array, b: Array) -> Array:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.asarray(np.clip(d2, 0, None))


def mmd_permutation(
    reference: Array, window: Array, bandwidth: float, permutations: int, rng: np.random.Generator
) -> tuple[float, float]:
    """(MMD^2, permutation p-value) with a Gaussian kernel. The statistic of a split of the
    pooled points is ``w' K w`` with weights 1/m and -1/n; every permutation's at once is one
    matrix product."""
    pooled = np.concatenate([reference, window])
    m, total = len(reference), len(pooled)
    kernel = np.exp(-_sq_distances(pooled, pooled) / (2 * bandwidth**2))
    signs = np.empty((total, permutations + 1))
    base = np.r_[np.full(m, 1.0 / m), np.full(total - m, -1.0 / (total - m))]
    signs[:, 0] = base
    for j in range(1, permutations + 1):
        signs[:, j] = base[rng.permutation(total)]
    values = np.einsum("ij,ij->j", signs, kernel @ signs)
    observed = values[0]
    p = (1 + np.count_nonzero(values[1:] >= observed)) / (permutations + 1)
    return float(observed), float(p)


def proportion_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for k successes in n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def judge_window(
    profile: Profile,
    window: Array,
    alpha: float = 0.01,
    min_window: int = 32,
    seed: int = 0,
    permutations: int = PERMUTATIONS,
) -> dict[str, Any]:
    """A window's answers: ``status`` ``not_enough_traffic`` below ``min_window`` images
    (with how many it has and needs), else the drift test, the accuracy estimate, the head
    disagreement and the class frequencies, each with its reference value."""
    n = len(window)
    if n < min_window:
        return {"status": "not_enough_traffic", "n": n, "min_window": min_window}
    rng = np.random.default_rng(seed)
    ref = profile.stats
    projected = window[:, len(STAT_COLUMNS) :]
    mmd, p_mmd = mmd_permutation(profile.reference, projected, profile.bandwidth, permutations, rng)
    ks = stats.ks_2samp(window[:, 0], ref[:, 0])
    disagree = int((window[:, 4] != window[:, 5]).sum())
    ref_disagree = int((ref[:, 4] != ref[:, 5]).sum())
    table = [[disagree, n - disagree], [ref_disagree, len(ref) - ref_disagree]]
    _, p_disagree = stats.fisher_exact(table, alternative="greater")
    pvalues = {"mmd": p_mmd, "ks_confidence": float(ks.pvalue), "disagreement": float(p_disagree)}
    combined = min(1.0, len(pvalues) * min(pvalues.values()))
    return {
        "status": "ok",
        "n": n,
        "drift": {
            "score": 0.0 - math.log10(max(combined, 1e-300)),  # 0.0, not -0.0, at p = 1
            "p_value": combined,
            "alpha": alpha,
            "threshold": -math.log10(alpha),
            "drifted": combined < alpha,
            "tests": {
                "mmd": {"statistic": mmd, "p_value": p_mmd, "dims": int(projected.shape[1])},
                "ks_confidence": {"statistic": float(ks.statistic), "p_value": float(ks.pvalue)},
                "disagreement": {"p_value": float(p_disagree)},
            },
        },
        "accuracy": estimate_accuracy(profile, window, rng),
        "disagreement": {
            "rate": disagree / n,
            "interval": list(proportion_interval(disagree, n)),
            "reference": profile.disagreement,
        },
        "confidence": {"mean": float(window[:, 0].mean()), "reference": float(ref[:, 0].mean())},
        "class_frequencies": class_frequencies(window[:, 3], len(profile.classes)),
    }


def estimate_accuracy(profile: Profile, window: Array, rng: np.random.Generator) -> dict[str, Any]:
    """ATC-NE's estimate, with a 95% bootstrap interval over the reference's threshold and
    the window's images."""
    scores = atc_score(window)
    estimate = float((scores > profile.atc_threshold).mean())
    resampled = scores[
        rng.integers(0, len(scores), size=(len(profile.atc_thresholds), len(scores)))
    ]
    boot = (resampled > profile.atc_thresholds[:, None]).mean(axis=1)
    low, high = np.quantile(boot, [0.025, 0.975])
    return {
        "estimate": estimate,
        "interval": [float(min(low, estimate)), float(max(high, estimate))],
        "method": "ATC-NE",
        "reference": profile.accuracy,
        # The plain average confidence (Hendrycks and Gimpel's baseline; exact for a calibrated
        # model), shown beside ATC so the two can be compared against measured accuracy.
        "average_confidence": float(window[:, 0].mean()),
    }


def profile_split(
    classifier: Classifier,
    dataset: Any,
    batch_size: int = 64,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
) -> Profile:
    """The reference profile of a labelled split (a ``models.data.ImageDataset``): one
    ``served_pass`` per batch, as ``/predict`` serves it."""
    was_training = classifier.training
    classifier.eval()
    outs, labels = [], []
    try:
        for images, label, _ in DataLoader(dataset, batch_size=batch_size):
            check_stop(should_stop, "the reference profile")
            outs.append(served_pass(classifier, images.to(classifier.device)))
            labels.append(label)
    finally:
        classifier.train(was_training)
    out = torch.cat(outs)
    probs, rest = unpack(out, len(classifier.classnames))
    assert rest is not None
    extra = rest.numpy().astype(np.float64)
    return build_profile(
        classifier.classnames,
        probs.numpy().astype(np.float64),
        extra[:, 0],
        extra[:, 1],
        extra[:, 2:],
        torch.cat(labels).numpy(),
        seed=seed,
    )
