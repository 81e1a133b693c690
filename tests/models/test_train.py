from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.config import ObjectiveConfig, TrainConfig
from models.data import ImageDataset, open_dataset
from models.errors import Cancelled, TrainingError
from models.heads import Classifier
from models.objectives import CorePrior, build_objective
from models.train import (
    Progress,
    cosine_with_warmup,
    epoch_order,
    param_groups,
    train,
    training_mode,
)
from tests.conftest import make_classifier


def _train_set(root: Path, classifier: Classifier) -> ImageDataset:
    ds = open_dataset(root)
    return ImageDataset(ds.split("train"), ds.classnames)


def _run(classifier: Classifier, root: Path, cfg: TrainConfig, **kwargs):  # type: ignore[no-untyped-def]
    objective = build_objective(
        ObjectiveConfig(name="drm"), classifier, cfg.seed, CorePrior.per_step(classifier)
    )
    return train(
        classifier,
        objective,
        _train_set(root, classifier),
        cfg,
        transform=classifier.backbone.transform(train=True),
        **kwargs,
    )


def test_loss_decreases_on_a_learnable_problem(classifier: Classifier, shapes_root: Path) -> None:
    losses: list[float] = []
    cfg = TrainConfig(epochs=6, batch_size=8, lr=1e-3, warmup_steps=2, seed=0)
    _run(classifier, shapes_root, cfg, callback=lambda p: losses.append(p.losses["loss"]))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


def test_resumed_run_gives_the_same_weights(shapes_root: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-3, warmup_steps=1, seed=1, grad_accum=1)

    fresh = make_classifier
    whole = fresh()
    _run(whole, shapes_root, cfg)

    interrupted = fresh()

    def preempt_at_3(p: Progress) -> str | None:
        return "preempt" if p.step == 3 else None

    with pytest.raises(Cancelled):
        _run(interrupted, shapes_root, cfg, callback=preempt_at_3, checkpoint_dir=tmp_path)
    resumed = fresh()  # a new process would start from scratch weights, then load
    result = _run(resumed, shapes_root, cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from == 3
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_cancel_stops_without_a_checkpoint(
    classifier: Classifier, shapes_root: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(epochs=2, batch_size=8, seed=0)
    with pytest.raises(Cancelled, match="cancel"):
        _run(classifier, shapes_root, cfg, callback=lambda p: "cancel", checkpoint_dir=tmp_path)
    assert not list(tmp_path.glob("step-*"))


def test_checkpoint_of_another_run_is_refused(
    classifier: Classifier, shapes_root: Path, tmp_path: Path
) -> None:
    cfg = TrainConfig(epochs=1, batch_size=8, seed=0, checkpoint_every=1, max_steps=2)
    _run(classifier, shapes_root, cfg, checkpoint_dir=tmp_path, run_key="a")
    with pytest.raises(TrainingError, match="another run"):
        _run(classifier, shapes_root, cfg, checkpoint_dir=tmp_path, run_key="b")


def test_non_finite_loss_fails_with_the_step(classifier: Classifier, shapes_root: Path) -> None:
    with torch.no_grad():
        classifier.clip.logit_scale.fill_(float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss at step 0"):
        _run(classifier, shapes_root, TrainConfig(epochs=1, batch_size=8))


def test_progress_reports_step_lr_throughput_and_eta(
    classifier: Classifier, shapes_root: Path
) -> None:
    seen: list[Progress] = []
    cfg = TrainConfig(epochs=1, batch_size=8, max_steps=3, eval_every=2)
    _run(classifier, shapes_root, cfg, callback=seen.append, evaluate=lambda c: {"val": 1.0})
    steps = [p for p in seen if p.event == "step"]
    assert [p.step for p in steps] == [1, 2, 3]
    assert all(p.total_steps == 3 and p.images_per_s > 0 and p.lr > 0 for p in steps)
    assert steps[-1].eta_s == 0
    assert [p.metrics for p in seen if p.event == "eval"] == [{"val": 1.0}]


def test_gradient_accumulation_counts_optimizer_steps(
    classifier: Classifier, shapes_root: Path
) -> None:
    seen: list[Progress] = []
    cfg = TrainConfig(epochs=1, batch_size=4, grad_accum=2)
    _run(classifier, shapes_root, cfg, callback=seen.append)
    # 32 training images, batches of 4 -> 8 micro-batches -> 4 optimizer steps.
    assert [p.step for p in seen] == [1, 2, 3, 4]


def test_frozen_parameters_stay_frozen(shapes_root: Path) -> None:
    from models.backbone import create_backbone
    from models.config import BackboneConfig
    from models.data.synthetic import CLASSES, DESCRIPTIONS

    backbone = create_backbone(BackboneConfig(freeze_text=True, image_unlocked_groups=1))
    classifier = Classifier(backbone, CLASSES, ["a {c}."], DESCRIPTIONS)
    before = {k: v.clone() for k, v in classifier.clip.state_dict().items()}
    _run(classifier, shapes_root, TrainConfig(epochs=1, batch_size=8, max_steps=2, lr=1e-2))
    after = classifier.clip.state_dict()
    assert torch.equal(before["token_embedding.weight"], after["token_embedding.weight"])
    assert torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert not torch.equal(before["visual.proj"], after["visual.proj"])


def test_schedule_warms_up_then_decays_to_zero() -> None:
    f = cosine_with_warmup(warmup=4, total=20)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.0)
    assert all(f(s) >= f(s + 1) for s in range(4, 20))


def test_epoch_order_is_seeded_and_sharded() -> None:
    assert epoch_order(10, 0, 0, 0, 1) == epoch_order(10, 0, 0, 0, 1)
    assert epoch_order(10, 0, 0, 0, 1) != epoch_order(10, 0, 1, 0, 1)
    a, b = epoch_order(10, 0, 0, 0, 2), epoch_order(10, 0, 0, 1, 2)
    assert len(a) == len(b) == 5 and not set(a) & set(b)


def test_weight_decay_groups_skip_gains_biases_and_temperature(classifier: Classifier) -> None:
    decay, no_decay = param_groups(classifier, 0.1)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(classifier.clip.logit_scale) in no_decay_ids
    assert all(p.ndim >= 2 for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_flyp_paper_decay_reaches_every_trainable_parameter(classifier: Classifier) -> None:
    (group,) = param_groups(classifier, 0.2, decay_on="all")
    trainable = {id(p) for p in classifier.parameters() if p.requires_grad}
    assert {id(p) for p in group["params"]} == trainable
    assert id(classifier.clip.logit_scale) in trainable and group["weight_decay"] == 0.2


@pytest.mark.parametrize("freeze", [True, False])
def test_batch_norm_statistics_are_frozen_while_training_unless_asked(freeze: bool) -> None:
    # Re-estimating them from small fine-tuning batches wrecked the offline backbone (an
    # EfficientNet): ID top-1 fell from 0.91 to 0.55 within nine steps, for every objective.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    before = model[1].running_mean.clone()
    training_mode(model, freeze_norm_stats=freeze)
    assert model.training and model[0].training
    model(torch.randn(8, 3, 8, 8) + 5.0)
    assert torch.equal(model[1].running_mean, before) is freeze
    assert model[1].training is not freeze
