from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.cli import main
from models.config import ObjectiveConfig
from models.errors import ConfigError
from models.heads import Classifier
from models.objective_registry import OBJECTIVES, objective_names
from models.objectives import (
    PC_EPS,
    Batch,
    CorePrior,
    DualEncoder,
    build_objective,
    contrastive_per_sample,
    core_probabilities,
    soft_cross_entropy,
    soft_target,
)


def _batch(n: int = 8, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=gen)
    labels = torch.arange(n) % 4
    return Batch(images, labels, torch.arange(n))


def _affinity_reference(features: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """The first reconstruction's p_c, written out: min-max over raw cosine affinities."""
    affinity = torch.nn.functional.normalize(features.float(), dim=-1) @ head.float().t()
    low = affinity.min(dim=-1, keepdim=True).values
    high = affinity.max(dim=-1, keepdim=True).values
    return (affinity - low) / (high - low).clamp_min(PC_EPS)


@pytest.mark.parametrize("norm", ["prob", "affinity"])
def test_core_probabilities_lie_in_unit_interval_with_max_one(norm: str) -> None:
    features = torch.randn(16, 32)
    head = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    p = core_probabilities(features, head, scale=100.0, norm=norm)
    assert p.shape == (16, 5)
    assert (p >= 0).all() and (p <= 1).all()
    assert torch.equal(p.max(dim=-1).values, torch.ones(16))
    assert torch.equal(p.min(dim=-1).values, torch.zeros(16))


@pytest.mark.parametrize("norm", ["prob", "affinity"])
def test_core_probabilities_rank_classes_like_cosine_affinity(norm: str) -> None:
    head = torch.eye(3)
    features = torch.tensor([[0.9, 0.1, 0.0]])
    p = core_probabilities(features, head, scale=10.0, norm=norm)
    assert p.argmax().item() == 0 and p.argmin().item() == 2


def test_affinity_norm_is_the_old_p_c_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(32, 16, generator=gen)
    head = torch.nn.functional.normalize(torch.randn(7, 16, generator=gen), dim=-1)
    p = core_probabilities(features, head, scale=50.0, norm="affinity", temperature=3.0)
    assert torch.equal(p, _affinity_reference(features, head))


def test_prob_norm_is_min_max_of_the_scaled_softmax() -> None:
    gen = torch.Generator().manual_seed(2)
    features = torch.randn(8, 16, generator=gen)
    head = torch.nn.functional.normalize(torch.randn(6, 16, generator=gen), dim=-1)
    cos = torch.nn.functional.normalize(features, dim=-1) @ head.t()
    q = (2.0 * 30.0 * cos).softmax(dim=-1)
    low, high = q.min(dim=-1, keepdim=True).values, q.max(dim=-1, keepdim=True).values
    expected = (q - low) / (high - low)
    p = core_probabilities(features, head, scale=30.0, norm="prob", temperature=2.0)
    torch.testing.assert_close(p, expected)
    # Probabilities leave the classes far from the best near zero, which affinities do not:
    # the affinity reading keeps every class within a few hundredths of its neighbours.
    affinity = core_probabilities(features, head, scale=30.0, norm="affinity")
    assert p.sum(dim=-1).mean() < affinity.sum(dim=-1).mean()


def test_prob_norm_with_a_huge_temperature_tends_to_one_hot() -> None:
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(20, 16, generator=gen)
    head = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    p = core_probabilities(features, head, scale=100.0, norm="prob", temperature=1e4)
    one_hot = torch.nn.functional.one_hot(p.argmax(dim=-1), 5).float()
    torch.testing.assert_close(p, one_hot, atol=1e-6, rtol=0)
    mild = core_probabilities(features, head, scale=1.0, norm="prob", temperature=1.0)
    assert (mild - torch.nn.functional.one_hot(mild.argmax(dim=-1), 5)).abs().max() > 0.1


def test_core_probabilities_refuse_an_unknown_norm() -> None:
    with pytest.raises(ValueError, match="pc_norm"):
        core_probabilities(torch.randn(2, 4), torch.eye(4), scale=1.0, norm="rank")


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


@pytest.mark.parametrize("norm", ["prob", "affinity"])
def test_cached_pc_equals_per_step_pc_without_augmentation(
    classifier: Classifier, norm: str
) -> None:
    cfg = ObjectiveConfig(pc_norm=norm)
    batch = _batch(n=6)
    loader = [
        (batch.images[:3], batch.labels[:3], batch.indices[:3]),
        (batch.images[3:], batch.labels[3:], batch.indices[3:]),
    ]
    cached = CorePrior.cached(classifier, loader, cfg)
    per_step = CorePrior.per_step(classifier, cfg)
    torch.testing.assert_close(cached(batch), per_step(batch), rtol=1e-5, atol=1e-6)


def test_prior_uses_the_frozen_models_own_logit_scale(classifier: Classifier) -> None:
    batch = _batch(n=6)
    prior = CorePrior.per_step(classifier, ObjectiveConfig(pc_norm="prob", pc_temperature=2.0))
    s0 = float(classifier.clip.logit_scale.detach().exp())
    features = classifier.image_features(batch.images)
    expected = core_probabilities(
        features, classifier.concept_head, scale=s0, norm="prob", temperature=2.0
    )
    with torch.no_grad():
        classifier.clip.logit_scale.add_(1.0)  # training moves the scale: p_c must not follow
    torch.testing.assert_close(prior(batch), expected.detach(), rtol=1e-5, atol=1e-6)


def test_soft_target_renormalises_p_c_and_a_one_hot_target_is_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(4)
    features = torch.randn(10, 16, generator=gen)
    head = torch.nn.functional.normalize(torch.randn(5, 16, generator=gen), dim=-1)
    for norm in ("prob", "affinity"):
        target = soft_target(core_probabilities(features, head, scale=20.0, norm=norm))
        torch.testing.assert_close(target.sum(dim=-1), torch.ones(10))
    logits = torch.randn(10, 5, generator=gen)
    sharp = core_probabilities(features, head, scale=100.0, norm="prob", temperature=1e6)
    torch.testing.assert_close(
        soft_cross_entropy(logits, sharp), F.cross_entropy(logits, sharp.argmax(dim=-1))
    )


def test_soft_wrm_follows_the_p_c_norm(classifier: Classifier) -> None:
    encoder = DualEncoder(classifier)
    batch = _batch()
    wrm = {}
    for norm in ("prob", "affinity"):
        cfg = ObjectiveConfig(name="drm", wrm="soft", pc_norm=norm)
        drm = build_objective(cfg, classifier, 0, CorePrior.per_step(classifier, cfg))
        wrm[norm] = drm(encoder, batch, step=0)["wrm"]
    assert not torch.isclose(wrm["prob"], wrm["affinity"])


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


def test_one_registry_feeds_validation_listing_and_building(classifier: Classifier) -> None:
    assert objective_names() == ("zeroshot", "ce", "flyp", "drm")
    with pytest.raises(ConfigError, match="must be one of \\['zeroshot', 'ce', 'flyp', 'drm'\\]"):
        ObjectiveConfig(name="nope")
    built = {
        name: type(build_objective(ObjectiveConfig(name=name), classifier, 0, None)).__name__
        for name in ("zeroshot", "ce", "flyp")
    }
    assert built == {"zeroshot": "ZeroShot", "ce": "CrossEntropy", "flyp": "Flyp"}
    assert all(spec.description for spec in OBJECTIVES.values())


def test_models_list_prints_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1 : 1 + len(OBJECTIVES)] == [
        f"  {name:9s} {spec.description}" for name, spec in OBJECTIVES.items()
    ]


def test_pc_head_default_reads_p_c_from_the_frozen_default_head(classifier: Classifier) -> None:
    batch = _batch(n=6)
    assert not torch.allclose(classifier.default_head, classifier.concept_head)
    features = classifier.image_features(batch.images)
    scale = float(classifier.clip.logit_scale.detach().exp())
    for head in ("concept", "default"):
        cfg = ObjectiveConfig(name="drm", wrm="soft", pc_head=head)
        rows = classifier.default_head if head == "default" else classifier.concept_head
        expected = core_probabilities(features, rows, scale=scale, norm="prob").detach()
        torch.testing.assert_close(CorePrior.per_step(classifier, cfg)(batch), expected)
        loader = [(batch.images, batch.labels, batch.indices)]
        cached = CorePrior.cached(classifier, loader, cfg)
        torch.testing.assert_close(cached(batch), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="pc_head"):
        ObjectiveConfig(pc_head="dual")


def test_soft_with_the_default_head_target_differs_and_trains_like_soft(
    classifier: Classifier,
) -> None:
    encoder = DualEncoder(classifier)
    batch = _batch()
    parts, grads = {}, {}
    for head in ("concept", "default"):
        cfg = ObjectiveConfig(name="drm", wrm="soft", pc_head=head)
        drm = build_objective(cfg, classifier, 0, CorePrior.per_step(classifier, cfg))
        classifier.zero_grad()
        parts[head] = drm(encoder, batch, step=0)
        parts[head]["loss"].backward()
        grads[head] = {
            n: p.grad.clone()
            for n, p in classifier.named_parameters()
            if p.requires_grad and p.grad is not None
        }
    # the same ERM, another target: another WRM
    torch.testing.assert_close(parts["concept"]["erm"], parts["default"]["erm"])
    assert not torch.isclose(parts["concept"]["wrm"], parts["default"]["wrm"])
    # gradients reach the same parameters (both towers), finite, and differ
    assert set(grads["default"]) == set(grads["concept"])
    assert any("visual" in n for n in grads["default"])
    assert any("visual" not in n for n in grads["default"])
    assert all(torch.isfinite(g).all() for g in grads["default"].values())
    assert any(
        not torch.allclose(grads["default"][n], grads["concept"][n]) for n in grads["default"]
    )
