"""The monitor's numerics against stated properties: the packed pass serves exactly what the
classifier serves, no-shift windows are flagged at about the test's level, a shift is flagged,
ATC's estimate tracks the accuracy, and a small window is "not enough traffic yet"."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.heads import Classifier
from models.monitoring import (
    STAT_COLUMNS,
    Profile,
    build_profile,
    image_stats,
    judge_window,
    proportion_interval,
    served_pass,
    unpack,
)

CLASSES = [f"c{i}" for i in range(5)]


def test_served_pass_serves_exactly_the_classifiers_probabilities(classifier: Classifier) -> None:
    images = torch.randn(3, 3, *classifier.backbone.image_size)
    with torch.no_grad():
        expected = classifier(images).float()
    out = served_pass(classifier, images)
    probs, rest = unpack(out, len(classifier.classnames))
    assert torch.equal(probs, expected)
    assert rest is not None
    features = rest[:, 2:]
    assert torch.allclose(features.norm(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        emb = classifier.image_features(images)
        default = classifier.logits_from_features(emb, "default").argmax(1)
    assert torch.equal(rest[:, 0].long(), default)
    bare, none = unpack(expected, len(classifier.classnames))
    assert none is None and torch.equal(bare, expected)


def synthetic(n: int, rng: np.random.Generator, shift: float = 0.0, noise: float = 1.0):
    """Gaussian class clusters in 32 dims; ``shift`` moves every image and blurs the classes
    (lower confidence, more errors), as a corruption does."""
    labels = rng.integers(0, len(CLASSES), n)
    centres = np.eye(len(CLASSES), 32) * 3.0
    features = centres[labels] + rng.normal(0, noise + shift, (n, 32)) + shift * 0.8
    logits = features @ centres.T / 3.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    default = (logits + rng.normal(0, 0.3 + shift, logits.shape)).argmax(1)
    concept = (logits + rng.normal(0, 0.3 + shift, logits.shape)).argmax(1)
    return probs, default, concept, features, labels


def profile_and_windows(seed: int = 0) -> tuple[Profile, np.random.Generator]:
    rng = np.random.default_rng(seed)
    return build_profile(CLASSES, *synthetic(1000, rng)), rng


def window(profile: Profile, rng: np.random.Generator, n: int, shift: float = 0.0):
    probs, default, concept, features, labels = synthetic(n, rng, shift)
    return image_stats(probs, default, concept, features, profile.pca), labels


def test_profile_round_trips_through_json() -> None:
    profile, _ = profile_and_windows()
    again = Profile.from_json(profile.to_json())
    assert np.array_equal(again.stats, profile.stats)
    assert again.atc_threshold == profile.atc_threshold
    assert again.summary()["n"] == 1000
    assert profile.stats.shape[1] == len(STAT_COLUMNS) + 16


def test_no_shift_is_rarely_flagged_and_a_shift_always() -> None:
    profile, rng = profile_and_windows()
    alarms = 0
    for seed in range(40):
        stats, _ = window(profile, rng, 128)
        result = judge_window(profile, stats, alpha=0.05, seed=seed, permutations=200)
        alarms += result["drift"]["drifted"]
    assert alarms <= 6  # 5% of 40 is 2; a binomial tail above 6 has probability < 0.5%
    for seed in range(5):
        stats, _ = window(profile, rng, 128, shift=0.6)
        result = judge_window(profile, stats, alpha=0.01, seed=seed, permutations=200)
        assert result["drift"]["drifted"], result["drift"]
        assert result["drift"]["score"] > result["drift"]["threshold"]


def calibrated(n: int, rng: np.random.Generator, sharpness: float):
    """A calibrated model (each label drawn from its own predicted probabilities): ATC's
    premise. A lower ``sharpness`` is a shift to harder images, where accuracy drops."""
    logits = rng.normal(0, sharpness, (n, len(CLASSES)))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    labels = np.array([rng.choice(len(CLASSES), p=p) for p in probs])
    features = rng.normal(0, 1, (n, 32))
    pred = probs.argmax(1)
    return probs, pred, pred, features, labels


def test_atc_estimate_matches_id_accuracy_and_falls_with_it() -> None:
    """In distribution ATC is unbiased; under a shift to harder images it falls with the
    accuracy (not exactly: ATC is exact only under its own assumptions, see the benchmark)."""
    rng = np.random.default_rng(0)
    profile = build_profile(CLASSES, *calibrated(2000, rng, 3.0))
    estimates, truths = [], []
    for sharpness in (3.0, 2.0, 1.2):
        probs, default, concept, features, labels = calibrated(1000, rng, sharpness)
        stats = image_stats(probs, default, concept, features, profile.pca)
        truths.append(float((stats[:, 3] == labels).mean()))
        accuracy = judge_window(profile, stats, permutations=50)["accuracy"]
        estimates.append(accuracy["estimate"])
        low, high = accuracy["interval"]
        assert low <= accuracy["estimate"] <= high
    assert abs(estimates[0] - truths[0]) < 0.04, (estimates, truths)
    assert estimates[0] > estimates[1] > estimates[2] and truths[0] > truths[1] > truths[2]
    assert accuracy["reference"] == pytest.approx(profile.accuracy)


def test_small_window_is_not_enough_traffic() -> None:
    profile, rng = profile_and_windows()
    stats, _ = window(profile, rng, 10)
    result = judge_window(profile, stats, min_window=32)
    assert result == {"status": "not_enough_traffic", "n": 10, "min_window": 32}


def test_wilson_interval() -> None:
    low, high = proportion_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert proportion_interval(0, 0) == (0.0, 1.0)
