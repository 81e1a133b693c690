"""A whole fine-tuning run: data -> zero-shot -> training -> WiSE-FT sweep -> artifact.

This is what the CLI's ``finetune`` and the service's worker call. It reads nothing from the
environment; the caller passes the config, a device and where to keep checkpoints.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from models._version import __version__
from models.artifacts import Artifact, classifier_card, save_artifact
from models.backbone import create_backbone, list_architectures, resolve_device
from models.config import ObjectiveConfig, RunConfig, to_dict
from models.data import (
    DatasetSplits,
    ImageDataset,
    check_descriptions,
    load_descriptions,
    open_dataset,
    validate_splits,
)
from models.diagnostics import description_diagnostics, guard_message, near_chance
from models.diagnostics import summary_line as diagnostics_line
from models.errors import ConfigError, WeakDescriptionsError
from models.evaluation import ShouldStop, check_stop, split_evaluator, summary
from models.heads import Classifier, class_embeddings, concept_prompts
from models.json_values import stable_hash
from models.objective_registry import objective_spec
from models.objectives import CorePrior, build_objective, core_probabilities
from models.templates import resolve_templates
from models.train import Callback, TrainResult, train
from models.wiseft import CurvePoint, merge, select, served_beta, sweep

log = logging.getLogger(__name__)
Note = Callable[[str], None]


@dataclass
class RunResult:
    artifact: Artifact
    card: dict[str, Any]


# (section, key) of config fields added after checkpoints were first written (see run_key).
ADDED_KEYS = (
    ("wise", "tie_break"),
    ("wise", "paired_level"),
    ("wise", "heads"),
    ("objective", "pc_head"),
)


def run_key(cfg: RunConfig) -> str:
    """What must match for a checkpoint to be continued: everything but where outputs go."""
    relevant = {k: v for k, v in to_dict(cfg).items() if k != "output_dir"}
    relevant["train"].pop("device", None)
    # Confinement changes which files may be read, not what is trained: jobs checkpointed
    # before it was set still resume.
    relevant["data"].pop("within", None)
    # Keys added after checkpoints existed leave the key unchanged at their defaults, so a job
    # checkpointed before they existed still resumes.
    defaults = to_dict(RunConfig())
    for section, key in ADDED_KEYS:
        if relevant[section].get(key) == defaults[section][key]:
            relevant[section].pop(key, None)
    return stable_hash(relevant)[:16]


def versions() -> dict[str, str]:
    return {
        "models": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "python": platform.python_version(),
    }


def prepare_data(cfg: RunConfig) -> tuple[DatasetSplits, dict[str, tuple[str, ...]]]:
    """Open and validate the dataset and its class descriptions; bad data fails here, early."""
    data = cfg.data
    if not data.path:
        raise ConfigError("no dataset given", key="data.path")
    ds = open_dataset(data.path, within=data.within)
    required = [data.train_split, data.val_split, *data.ood_splits]
    validate_splits(ds, required, check_images=data.check_images)
    if data.descriptions is None:
        if objective_spec(cfg.objective.name).needs_descriptions:
            name = cfg.objective.name
            raise ConfigError(f"the {name} objective needs class descriptions", "data.descriptions")
        # Without descriptions the concept head falls back to the bare class names.
        return ds, {c: (c,) for c in ds.classnames}
    descriptions = load_descriptions(data.descriptions)
    check_descriptions(ds.classnames, descriptions, file=data.descriptions)
    return ds, descriptions


def eval_splits(cfg: RunConfig, ds: DatasetSplits) -> dict[str, Sequence[Any]]:
    """ID validation, ID test when the dataset has one, and every OOD split asked for."""
    names = [cfg.data.val_split]
    if "test" in ds.splits and "test" not in names:
        names.append("test")
    names += [s for s in cfg.data.ood_splits if s not in names]
    return {name: ds.split(name) for name in names}


def image_records(cfg: RunConfig, ds: DatasetSplits, everything: bool) -> dict[str, str]:
    """Which splits' evaluations keep per-image records (models.evaluation.IMAGE_RECORDS)."""
    val = cfg.data.val_split
    if everything:
        return {name: "true_prob" if name == val else "hits" for name in eval_splits(cfg, ds)}
    return {val: "hits"} if cfg.wise.selection == "paired" else {}


def build_classifier(cfg: RunConfig, classnames: Sequence[str], descriptions: Any) -> Classifier:
    device = resolve_device(cfg.train.device)
    # Random-init backbones (the test architectures) must be reproducible from the seed.
    torch.manual_seed(cfg.train.seed)
    backbone_cfg = cfg.backbone
    spec = objective_spec(cfg.objective.name)
    if not spec.trains_text and not backbone_cfg.freeze_text:
        # The objective never uses the text tower's gradients (ce's learned head): freezing it
        # keeps weight decay off it.
        backbone_cfg = dataclasses.replace(backbone_cfg, freeze_text=True)
    backbone = create_backbone(backbone_cfg, device)
    templates = resolve_templates(cfg.head.templates)
    return Classifier(
        backbone,
        classnames,
        templates,
        descriptions,
        beta=cfg.head.beta,
        learned_head=spec.learned_head,
    )


def cpu_state(classifier: Classifier) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in classifier.state_dict().items()}


def core_prior(
    cfg: RunConfig, classifier: Classifier, train_set: Sequence[Any], classnames: Sequence[str]
) -> CorePrior | None:
    if not objective_spec(cfg.objective.name).needs_prior:
        return None
    if cfg.objective.pc_mode == "per_step":
        return CorePrior.per_step(classifier, cfg.objective)
    return _cached_prior(cfg, classifier, train_set, classnames, cfg.objective)


def _cached_prior(
    cfg: RunConfig,
    classifier: Classifier,
    train_set: Sequence[Any],
    classnames: Sequence[str],
    objective: ObjectiveConfig,
    should_stop: ShouldStop | None = None,
) -> CorePrior:
    batches = _frozen_batches(cfg, classifier, train_set, classnames, should_stop)
    return CorePrior.cached(classifier, batches, objective)


def _frozen_batches(
    cfg: RunConfig,
    classifier: Classifier,
    samples: Sequence[Any],
    classnames: Sequence[str],
    should_stop: ShouldStop | None,
) -> Iterator[Any]:
    """``samples`` un-augmented (the eval transform), in order, in batches of 64: what the
    frozen model reads before training; ``should_stop`` asked between batches."""
    plain = ImageDataset(samples, classnames, classifier.backbone.transform(train=False))
    loader = DataLoader(plain, batch_size=64, num_workers=cfg.data.num_workers)
    return _stoppable(loader, should_stop)


def _stoppable(batches: Iterable[Any], should_stop: ShouldStop | None) -> Iterator[Any]:
    # A large split takes minutes: a cancel must not wait for the whole pass.
    for batch in batches:
        check_stop(should_stop, "the frozen concept head's pass")
        yield batch


@torch.no_grad()
def frozen_head_probs(
    cfg: RunConfig,
    classifier: Classifier,
    samples: Sequence[Any],
    classnames: Sequence[str],
    other_descriptions: Mapping[str, Sequence[str]] | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Tensor]:
    """From one pass of the frozen model over ``samples`` ([N, K] each, in their order): the
    ``default`` head's probabilities; the ``concept`` head's p_c, as DRM's cached prior computes
    it (``models.objectives.core_probabilities``); and with ``other_descriptions``, the p_c of
    the concept head those descriptions make (``other``). The description diagnostics' inputs.
    ``should_stop`` is asked between batches (raises Cancelled)."""
    device = classifier.device
    heads = {"concept": classifier.concept_head}
    if other_descriptions is not None:
        prompts = concept_prompts(classnames, other_descriptions)
        heads["other"] = class_embeddings(classifier.backbone, prompts, device)
    scale = classifier.clip.logit_scale.exp()
    was_training = classifier.training
    classifier.eval()
    rows: dict[str, list[Tensor]] = {"default": [], **{name: [] for name in heads}}
    for images, _, _ in _frozen_batches(cfg, classifier, samples, classnames, should_stop):
        features = classifier.image_features(images.to(device))
        rows["default"].append(classifier.probs_from_features(features, "default").cpu())
        for name, head in heads.items():
            rows[name].append(core_probabilities(features, head, scale).cpu())
    classifier.train(was_training)
    return {name: torch.cat(parts) for name, parts in rows.items()}


def diagnose_descriptions(
    cfg: RunConfig,
    classifier: Classifier,
    train_set: Sequence[Any],
    classnames: Sequence[str],
    prior: CorePrior | None,
) -> dict[str, Any] | None:
    """The frozen concept head on the training images, per class, against the default head
    (models.diagnostics); None without descriptions (the concept head is then the bare class
    names) or when turned off."""
    if cfg.data.descriptions is None or not cfg.data.diagnose_descriptions:
        return None
    heads = frozen_head_probs(cfg, classifier, train_set, classnames)
    # DRM's cached p_c where there is one and it is read from the concept head (objective.
    # pc_head): what training weighs the images by.
    cache = prior.cache if prior is not None else None
    probs = cache if cache is not None and cfg.objective.pc_head == "concept" else heads["concept"]
    labels, groups = [s.label for s in train_set], [s.group for s in train_set]
    return description_diagnostics(probs, labels, classnames, heads["default"], groups)


def guard_descriptions(cfg: RunConfig, diagnostics: dict[str, Any], say: Note) -> None:
    """The pre-training guard. With the frozen concept head near chance
    (models.diagnostics.near_chance): an objective that weighs images by its p_c raises
    WeakDescriptionsError unless ``data.allow_weak_descriptions``; otherwise, when the served
    dual head blends the concept head in (beta < 1), a warning is said and kept in the
    diagnostics (so the card and the report carry it). A backbone with random weights (the test
    architectures) recognises nothing whatever the descriptions: it is not judged."""
    if not near_chance(diagnostics) or not _pretrained(cfg):
        return
    problem = guard_message(diagnostics)
    uses_prior = objective_spec(cfg.objective.name).needs_prior
    if uses_prior and not cfg.data.allow_weak_descriptions:
        raise WeakDescriptionsError(
            f"{problem}; or set allow_weak_descriptions to train on them anyway",
            key="data.descriptions",
        )
    if uses_prior or cfg.head.beta < 1.0:
        diagnostics["warning"] = f"WARNING: {problem}"
        say(diagnostics["warning"])


def _pretrained(cfg: RunConfig) -> bool:
    """False for an open_clip architecture without pretrained weights (random init)."""
    arch = cfg.backbone.arch
    return bool(cfg.backbone.pretrained) or arch not in list_architectures()


def finetune(
    cfg: RunConfig,
    *,
    callback: Callback | None = None,
    checkpoint_dir: str | Path | None = None,
    note: Note | None = None,
    should_stop: Callable[[], bool] | None = None,
    record_images: bool = False,
    resume_key: str | None = None,
) -> RunResult:
    """Run ``cfg`` end to end and write the artifact to ``cfg.output_dir``.

    ``callback`` sees every training step and may stop training; ``should_stop`` is asked
    between evaluation batches and between WiSE-FT alphas, where no step runs (raises
    Cancelled). ``record_images`` keeps, in every evaluation's metrics (each head's
    ``images``, models.metrics.image_record), per-image hits of every split and the true
    class's probability on validation: what an offline study of the alpha rules needs
    (bench/shift). The paired rule keeps the validation hits it needs in any case.
    ``resume_key`` is what a checkpoint in ``checkpoint_dir`` must match to be
    continued, when ``run_key(cfg)`` would not do: a worker whose dataset path is its own
    download passes the key of the job's stored config, the same on every machine.
    """
    started = time.monotonic()
    say = note or log.info
    ds, descriptions = prepare_data(cfg)
    classifier = build_classifier(cfg, ds.classnames, descriptions)
    evaluate = split_evaluator(
        eval_splits(cfg, ds),
        ds.classnames,
        classifier.backbone.transform(train=False),
        num_workers=cfg.data.num_workers,
        should_stop=should_stop,
        scoring=ds.scoring,
        images=image_records(cfg, ds, record_images),
    )
    # Before the zero-shot evaluation: descriptions the guard refuses fail the run at once.
    train_split = ds.split(cfg.data.train_split)
    prior = core_prior(cfg, classifier, train_split, ds.classnames)
    diagnostics = diagnose_descriptions(cfg, classifier, train_split, ds.classnames, prior)
    if diagnostics is not None:
        say(diagnostics_line(diagnostics))
        guard_descriptions(cfg, diagnostics, say)
    zeroshot_state = cpu_state(classifier)
    zeroshot_metrics = evaluate(classifier)
    say(f"zero-shot (dual): {summary(zeroshot_metrics)}")

    objective = build_objective(cfg.objective, classifier, cfg.train.seed, prior)
    result: TrainResult | None = None
    curve: list[CurvePoint] = [CurvePoint(0.0, zeroshot_metrics)]
    finetuned_state = None
    selected, selected_head = 0.0, cfg.wise.heads[0]
    if objective_spec(cfg.objective.name).trains:
        train_set = ImageDataset(ds.split(cfg.data.train_split), ds.classnames)
        result = train(
            classifier,
            objective,
            train_set,
            cfg.train,
            transform=classifier.backbone.transform(cfg.data.augment, cfg.data.crop_scale),
            callback=callback,
            evaluate=_refreshing(evaluate),
            checkpoint_dir=checkpoint_dir,
            num_workers=cfg.data.num_workers,
            run_key=resume_key or run_key(cfg),
        )
        finetuned_state = cpu_state(classifier)
        # alpha 0 is the zero-shot model, evaluated above: its metrics are reused, not redone.
        swept = [a for a in cfg.wise.alphas if a != 0.0]
        curve = sweep(
            zeroshot_state, finetuned_state, swept, _at(classifier, evaluate), should_stop
        )
        if 0.0 in cfg.wise.alphas:
            curve.insert(0, CurvePoint(0.0, zeroshot_metrics))
        fixed = cfg.wise.fixed_alpha
        if cfg.wise.selection == "fixed" and fixed not in {p.alpha for p in curve}:
            # A fixed alpha off the swept grid: evaluated too (a rule over heads reads it).
            load_state(classifier, merge(zeroshot_state, finetuned_state, fixed))
            curve = sorted([*curve, CurvePoint(fixed, evaluate(classifier))], key=_alpha)
        choice = select(curve, cfg.wise, split=cfg.data.val_split)
        selected, selected_head = choice.alpha, choice.head
        load_state(classifier, merge(zeroshot_state, finetuned_state, selected))
        for point in curve:
            say(f"alpha {point.alpha:.2f}: {summary(point.metrics)}")
        say(f"selected alpha {selected}, {selected_head} head ({cfg.wise.selection})")
    # Every evaluation above scored dual inference at head.beta; from here on the classifier
    # serves the chosen head (dual at head.beta unless wise.heads offers another).
    classifier.beta = served_beta(selected_head, cfg.head.beta)

    card = run_card(cfg, ds, curve, selected, zeroshot_metrics, result, time.monotonic() - started)
    card["wise"]["selected_head"] = selected_head
    card["description_diagnostics"] = diagnostics
    # Both WiSE-FT ends are kept: re-merging at another alpha is then exact anywhere.
    zeroshot_end = zeroshot_state if finetuned_state is not None else None
    path = save_artifact(
        cfg.output_dir, classifier, card, finetuned_state, zeroshot_state=zeroshot_end
    )
    artifact = Artifact(classifier, {**classifier_card(classifier), **card}, path)
    return RunResult(artifact, artifact.card)


def _alpha(point: CurvePoint) -> float:
    return point.alpha


def load_state(classifier: Classifier, state: Mapping[str, Tensor]) -> None:
    """Load a (merged) state and rebuild the text-derived heads from its text tower."""
    classifier.load_state_dict(state, strict=True)
    classifier.refresh_heads()


def _at(classifier: Classifier, evaluate: Callable[[Classifier], dict[str, Any]]) -> Any:
    def evaluate_state(state: dict[str, Tensor]) -> dict[str, Any]:
        load_state(classifier, state)
        return evaluate(classifier)

    return evaluate_state


def _refreshing(evaluate: Callable[[Classifier], dict[str, Any]]) -> Any:
    """During training the heads lag the text tower; rebuild them before each evaluation."""

    def run(classifier: Classifier) -> dict[str, Any]:
        classifier.refresh_heads()
        return evaluate(classifier)

    return run


def run_card(
    cfg: RunConfig,
    ds: DatasetSplits,
    curve: Sequence[CurvePoint],
    selected: float,
    zeroshot_metrics: dict[str, Any],
    result: TrainResult | None,
    wall_s: float,
) -> dict[str, Any]:
    """Everything about the run worth keeping beside the weights."""
    by_alpha = {p.alpha: p.metrics for p in curve}
    return {
        "config": to_dict(cfg),
        "objective": cfg.objective.name,
        "dataset": {"source": ds.source, "fingerprint": ds.fingerprint, "counts": ds.counts()},
        "wise": {
            "alphas": [p.alpha for p in curve],
            "selection": cfg.wise.selection,
            "metric": cfg.wise.metric,
            "selected_alpha": selected,
            "curve": [{"alpha": p.alpha, "metrics": p.metrics} for p in curve],
        },
        "metrics": {
            "zeroshot": zeroshot_metrics,
            "finetuned": by_alpha.get(1.0),
            "selected": by_alpha.get(selected),
        },
        "training": None
        if result is None
        else {"steps": result.steps, "final_losses": result.losses, "evals": result.evals},
        "wall_s": wall_s,
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
