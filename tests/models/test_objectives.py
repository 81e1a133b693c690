from __future__ import annotations

import pytest
import torch

from models.config import ObjectiveConfig
from models.heads import Classifier
from models.objectives import (
    Batch,
    CorePrior,
    DualEncoder,
    build_objective,
    contrastive_per_sample,
    core_probabilities,
)


def _batch(n: int = 8, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    labels = torch.arange(n) % 4
    return Batch(images, labels, torch.arange(n))


def test_core_probabilities_lie_in_unit_interval_with_max_one() -> None:
    features = torch.randn(16, 32)
    head = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    p = core_probabilities(features, head)
    assert p.shape == (16, 5)
    assert (p >= 0).all() and (p <= 1).all()
    assert torch.equal(p.max(dim=-1).values, torch.ones(16))
    assert torch.equal(p.min(dim=-1).values, torch.zeros(16))


def test_core_probabilities_rank_classes_like_cosine_affinity() -> None:
    head = torch.eye(3)
    features = torch.tensor([[0.9, 0.1, 0.0]])
    p = core_probabilities(features, head)
    assert p.argmax().item() == 0 and p.argmin().item() == 2


def test_drm_with_lambda_zero_equals_flyp(classifier: Classifier) -> None:
    encoder = DualEncoder(classifier)
    batch = _batch()
    prior = CorePrior.per_step(classifier)
    flyp = build_objective(ObjectiveConfig(name="flyp"), classifier, seed=3)
    for wrm in ("weight", "soft"):
        drm = build_objective(ObjectiveConfig(name="drm", lam=0.0, wrm=wrm), classifier, 3, prior)
        drm_parts = drm(encoder, batch, step=5)
        flyp_parts = flyp(encoder, batch, step=5)
        torch.testing.assert_close(drm_parts["loss"], flyp_parts["loss"], rtol=1e-6, atol=1e-6)
        assert drm_parts["wrm"] > 0


def test_drm_adds_lambda_times_wrm(classifier: Classifier) -> None:
    encoder = DualEncoder(classifier)
    prior = CorePrior.per_step(classifier)
    drm = build_objective(ObjectiveConfig(name="drm", lam=2.0), classifier, 0, prior)
    parts = drm(encoder, _batch(), step=0)
    torch.testing.assert_close(parts["loss"].detach(), parts["erm"] + 2.0 * parts["wrm"])
    assert set(parts) == {"loss", "erm", "wrm", "pc_true"}


def test_cached_pc_equals_per_step_pc_without_augmentation(classifier: Classifier) -> None:
    batch = _batch(n=6)
    loader = [
        (batch.images[:3], batch.labels[:3], batch.indices[:3]),
        (batch.images[3:], batch.labels[3:], batch.indices[3:]),
    ]
    cached = CorePrior.cached(classifier, loader)
    per_step = CorePrior.per_step(classifier)
    torch.testing.assert_close(cached(batch), per_step(batch), rtol=1e-5, atol=1e-6)


def test_per_step_prior_uses_the_frozen_pretrained_tower(classifier: Classifier) -> None:
    prior = CorePrior.per_step(classifier)
    batch = _batch()
    before = prior(batch)
    with torch.no_grad():
        for p in classifier.clip.visual.parameters():
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(prior(batch), before)


def test_same_class_pairs_are_masked_from_negatives() -> None:
    features = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 0, 1, 1])
    masked = contrastive_per_sample(features, features, torch.tensor(10.0), labels)
    unmasked = contrastive_per_sample(features, features, torch.tensor(10.0), None)
    assert (masked <= unmasked + 1e-6).all()
    # Two identical images per class with identical prompts: unmasked, each pair has a twin it
    # cannot beat (loss >= log 2); masked, the twin is no negative and the loss vanishes.
    twins = torch.eye(8)[[0, 0, 1, 1]]
    unmasked = contrastive_per_sample(twins, twins, torch.tensor(100.0), None)
    masked = contrastive_per_sample(twins, twins, torch.tensor(100.0), labels)
    assert (unmasked >= torch.log(torch.tensor(2.0)) - 1e-6).all()
    assert masked.max() < 1e-6


@pytest.mark.parametrize("name", ["ce", "flyp", "drm"])
def test_objectives_give_finite_losses_and_gradients(classifier: Classifier, name: str) -> None:
    encoder = DualEncoder(classifier)
    prior = CorePrior.per_step(classifier)
    objective = build_objective(ObjectiveConfig(name=name), classifier, 0, prior)
    parts = objective(encoder, _batch(), step=0)
    parts["loss"].backward()
    grads = [p.grad for p in classifier.parameters() if p.requires_grad and p.grad is not None]
    assert torch.isfinite(parts["loss"]) and grads


def test_zeroshot_objective_does_not_train(classifier: Classifier) -> None:
    objective = build_objective(ObjectiveConfig(name="zeroshot"), classifier, 0)
    assert objective.trains is False
