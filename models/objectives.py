"""Training objectives, selected by name: ``zeroshot``, ``ce``, ``flyp`` and ``drm``.

Each objective maps a batch to a dict with ``loss`` (what is back-propagated) and its parts
(detached, for logging). DRM = ERM (FLYP's contrastive loss) + lambda * WRM, where WRM is a
worst-case risk estimated with core-feature descriptions and the core-based prediction p_c of
the frozen pre-trained model. See ../shared/docs/method.md for what is reconstructed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbone import encode_text
from models.config import PC_NORMS, ObjectiveConfig, knob_schema
from models.heads import Classifier
from models.objective_registry import (
    OBJECTIVES,
    ObjectiveSpec,
    objective_spec,
    register_objective,
)
from models.seeding import derive_seed

PC_EPS = 1e-8


def core_probabilities(
    image_features: Tensor,
    concept_head: Tensor,
    scale: float | Tensor,
    norm: str = "prob",
    temperature: float = 1.0,
) -> Tensor:
    """p_c(k|x), min-max normalised across classes: in [0, 1], the best class at exactly 1.

    ``prob`` (the paper, as a reviewer describes it): min-max of the concept head's probabilities
    softmax(temperature * scale * cos), with ``scale`` the frozen model's own logit scale, so
    classes far from the best fall to about 0. ``affinity`` (our first reading, kept as an
    ablation): min-max of the raw cosines, which leaves every class close to its neighbours.
    """
    affinity = F.normalize(image_features.float(), dim=-1) @ concept_head.float().t()
    if norm == "prob":
        values = (affinity * (float(scale) * temperature)).softmax(dim=-1)
    elif norm == "affinity":
        values = affinity
    else:
        raise ValueError(f"pc_norm must be one of {list(PC_NORMS)}, got {norm!r}")
    low = values.min(dim=-1, keepdim=True).values
    high = values.max(dim=-1, keepdim=True).values
    return (values - low) / (high - low).clamp_min(PC_EPS)


def soft_target(p_c: Tensor) -> Tensor:
    """The ``soft`` reading's target: p_c renormalised to sum to 1 over classes."""
    return p_c / p_c.sum(dim=-1, keepdim=True).clamp_min(PC_EPS)


def soft_cross_entropy(logits: Tensor, p_c: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` against ``soft_target(p_c)``."""
    return -(soft_target(p_c) * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def contrastive_per_sample(
    image_features: Tensor, text_features: Tensor, scale: Tensor, labels: Tensor | None
) -> Tensor:
    """Symmetric CLIP cross-entropy per pair (mean of image->text and text->image).

    With ``labels``, off-diagonal pairs of the same class are removed from the negatives: a
    batch holds several images of a class, and their prompts are not wrong answers.
    """
    logits = scale * image_features @ text_features.t()
    if labels is not None:
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = F.cross_entropy(logits, target, reduction="none")
    text_to_image = F.cross_entropy(logits.t(), target, reduction="none")
    return (image_to_text + text_to_image) / 2


@dataclass(frozen=True)
class Batch:
    images: Tensor
    labels: Tensor
    indices: Tensor  # dataset indices, the key of the p_c cache


# forward(images, tokens) -> (normalised image features, normalised text features, logit scale).
# Going through one module call lets DistributedDataParallel see the whole computation.
Encoder = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor | None, Tensor]]


class DualEncoder(nn.Module):
    """The module the training loop differentiates (and wraps in DDP)."""

    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(
        self, images: Tensor, tokens: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        clip: Any = self.classifier.clip
        image_features = F.normalize(clip.encode_image(images), dim=-1)
        text_features = None
        if tokens is not None:
            text_features = F.normalize(encode_text(clip, tokens), dim=-1)
        return image_features, text_features, clip.logit_scale.exp()


class CorePrior:
    """p_c from the frozen pre-trained model: looked up in a cache, or computed per step.

    The frozen model's logit scale is read once, when the prior is made (before training), so
    ``prob`` p_c never follows the scale being trained.
    """

    def __init__(
        self,
        concept_head: Tensor,
        cache: Tensor | None = None,
        frozen_visual: nn.Module | None = None,
        scale: float = 1.0,
        norm: str = "prob",
        temperature: float = 1.0,
    ) -> None:
        if cache is None and frozen_visual is None:
            raise ValueError("CorePrior needs a cache or a frozen image tower")
        self.concept_head = concept_head
        self.cache = cache
        self.frozen_visual = frozen_visual
        self.scale = scale
        self.norm = norm
        self.temperature = temperature

    @staticmethod
    def _settings(classifier: Classifier, cfg: ObjectiveConfig | None) -> dict[str, Any]:
        cfg = cfg or ObjectiveConfig()
        scale = float(classifier.clip.logit_scale.detach().exp())
        return {"scale": scale, "norm": cfg.pc_norm, "temperature": cfg.pc_temperature}

    @staticmethod
    def frozen_head(classifier: Classifier, cfg: ObjectiveConfig | None) -> Tensor:
        """A copy of the head p_c is read from (``objective.pc_head``), as it is now."""
        use_default = (cfg or ObjectiveConfig()).pc_head == "default"
        head = classifier.default_head if use_default else classifier.concept_head
        return head.detach().clone()

    def probabilities(self, features: Tensor) -> Tensor:
        head = self.concept_head.to(features.device)
        return core_probabilities(features, head, self.scale, self.norm, self.temperature)

    @classmethod
    def per_step(cls, classifier: Classifier, cfg: ObjectiveConfig | None = None) -> CorePrior:
        """Keep a frozen copy of the pre-trained image tower (call before training starts)."""
        visual: nn.Module = copy.deepcopy(classifier.clip.visual)
        visual.eval().requires_grad_(False)
        head = cls.frozen_head(classifier, cfg)
        return cls(head, frozen_visual=visual, **cls._settings(classifier, cfg))

    @classmethod
    @torch.no_grad()
    def cached(
        cls,
        classifier: Classifier,
        loader: Iterable[tuple[Tensor, Tensor, Tensor]],
        cfg: ObjectiveConfig | None = None,
    ) -> CorePrior:
        """Compute p_c once per training image, on un-augmented views (call before training)."""
        head = cls.frozen_head(classifier, cfg)
        prior = cls(head, cache=torch.empty(0), **cls._settings(classifier, cfg))
        was_training = classifier.training
        classifier.eval()
        rows: dict[int, Tensor] = {}
        for images, _, indices in loader:
            probs = prior.probabilities(classifier.image_features(images.to(classifier.device)))
            for i, p in zip(indices.tolist(), probs, strict=True):
                rows[i] = p.cpu()
        classifier.train(was_training)
        prior.cache = torch.stack([rows[i] for i in range(len(rows))])
        return prior

    @torch.no_grad()
    def __call__(self, batch: Batch) -> Tensor:
        if self.cache is not None:
            return self.cache[batch.indices.cpu()].to(batch.images.device)
        assert self.frozen_visual is not None
        return self.probabilities(self.frozen_visual(batch.images))


class Objective(Protocol):
    trains: bool

    def __call__(self, encoder: Encoder, batch: Batch, step: int) -> dict[str, Tensor]: ...


@dataclass
class PromptSampler:
    """Picks one prompt per sample, a pure function of (seed, step): resumed runs match."""

    prompts: Sequence[Sequence[str]]  # per class
    seed: int

    def for_labels(self, labels: Tensor, step: int, salt: int = 0) -> list[str]:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, step, salt))
        picks = torch.randint(0, 1 << 30, (len(labels),), generator=gen).tolist()
        return [
            self.prompts[k][r % len(self.prompts[k])]
            for k, r in zip(labels.tolist(), picks, strict=True)
        ]

    def one_per_class(self, step: int, salt: int = 0) -> list[str]:
        return self.for_labels(torch.arange(len(self.prompts)), step, salt)


def encode_prompts(
    encoder: Encoder, tokenizer: Callable[[Sequence[str]], Tensor], images: Tensor, texts: list[str]
) -> tuple[Tensor, Tensor, Tensor]:
    """Encode the images and the *distinct* prompts once; gather per-sample text features."""
    unique = sorted(set(texts))
    position = {t: i for i, t in enumerate(unique)}
    tokens = tokenizer(unique).to(images.device)
    image_features, text_features, scale = encoder(images, tokens)
    assert text_features is not None
    index = torch.tensor([position[t] for t in texts], device=images.device)
    return image_features, text_features[index], scale


def _detached(parts: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v if k == "loss" else v.detach() for k, v in parts.items()}


class CrossEntropy:
    """``ce``: cross-entropy over all classes with the (learned) default head."""

    trains = True

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    def __call__(self, encoder: Encoder, batch: Batch, step: int) -> dict[str, Tensor]:
        image_features, _, scale = encoder(batch.images, None)
        logits = scale * image_features @ self.classifier.default_head.t()
        loss = F.cross_entropy(logits, batch.labels)
        return {"loss": loss, "erm": loss.detach()}


class Flyp:
    """``flyp``: contrastive loss between images and their class's template prompts."""

    trains = True

    def __init__(self, classifier: Classifier, cfg: ObjectiveConfig, seed: int) -> None:
        self.tokenizer = classifier.backbone.tokenizer
        self.defaults = PromptSampler(classifier.default_prompts(), seed)
        self.mask = cfg.mask_same_class

    def __call__(self, encoder: Encoder, batch: Batch, step: int) -> dict[str, Tensor]:
        texts = self.defaults.for_labels(batch.labels, step)
        image_f, text_f, scale = encode_prompts(encoder, self.tokenizer, batch.images, texts)
        labels = batch.labels if self.mask else None
        loss = contrastive_per_sample(image_f, text_f, scale, labels).mean()
        return {"loss": loss, "erm": loss.detach()}


class Drm:
    """``drm``: FLYP's ERM plus lambda times the worst-case risk from concept descriptions.

    ``weight``: the contrastive loss with concept-description prompts, each sample weighted by
    p_c of its true class (averaged over the batch, so lambda keeps one scale).
    ``soft``: cross-entropy of the concept head's prediction against p_c renormalised to sum 1.
    p_c is whatever the prior gives (``objective.pc_norm``: probabilities or affinities;
    ``objective.pc_head``: the frozen concept head, or the frozen default head as a control).
    Both ERM and WRM prompts go through the text tower in one call, deduplicated.
    """

    trains = True

    def __init__(
        self, classifier: Classifier, cfg: ObjectiveConfig, seed: int, prior: CorePrior
    ) -> None:
        self.tokenizer = classifier.backbone.tokenizer
        self.defaults = PromptSampler(classifier.default_prompts(), seed)
        self.concepts = PromptSampler(classifier.concept_prompts(), seed)
        self.cfg = cfg
        self.prior = prior

    def __call__(self, encoder: Encoder, batch: Batch, step: int) -> dict[str, Tensor]:
        n = len(batch.labels)
        erm_texts = self.defaults.for_labels(batch.labels, step)
        if self.cfg.wrm == "weight":
            wrm_texts = self.concepts.for_labels(batch.labels, step, salt=1)
        else:
            wrm_texts = self.concepts.one_per_class(step, salt=1)
        image_f, text_f, scale = encode_prompts(
            encoder, self.tokenizer, batch.images, erm_texts + wrm_texts
        )
        labels = batch.labels if self.cfg.mask_same_class else None
        erm = contrastive_per_sample(image_f, text_f[:n], scale, labels).mean()
        p_c = self.prior(batch)
        p_true = p_c.gather(1, batch.labels[:, None]).squeeze(1)
        if self.cfg.wrm == "weight":
            per_sample = contrastive_per_sample(image_f, text_f[n:], scale, labels)
            wrm = (p_true * per_sample).mean()
        else:
            wrm = soft_cross_entropy(scale * image_f @ text_f[n:].t(), p_c)
        loss = erm + self.cfg.lam * wrm
        return _detached({"loss": loss, "erm": erm, "wrm": wrm, "pc_true": p_true.mean()})


class ZeroShot:
    """``zeroshot``: no training; the pipeline evaluates the pre-trained heads only."""

    trains = False

    def __call__(self, encoder: Encoder, batch: Batch, step: int) -> dict[str, Tensor]:
        raise RuntimeError("the zeroshot objective does not train")


def _zeroshot(
    classifier: Classifier, cfg: ObjectiveConfig, seed: int, prior: CorePrior | None
) -> Objective:
    return ZeroShot()


register_objective(
    ObjectiveSpec(
        "zeroshot",
        "no training: evaluate the zero-shot heads",
        _zeroshot,
        label="Zero-shot (no training)",
        trains=False,
    )
)


def _cross_entropy(
    classifier: Classifier, cfg: ObjectiveConfig, seed: int, prior: CorePrior | None
) -> Objective:
    return CrossEntropy(classifier)


register_objective(
    ObjectiveSpec(
        "ce",
        "cross-entropy over all classes with a learned head initialised from zero-shot",
        _cross_entropy,
        label="Cross-entropy",
        learned_head=True,
        # ce never uses the text tower's gradients: freezing it keeps weight decay off it.
        trains_text=False,
    )
)


def _flyp(
    classifier: Classifier, cfg: ObjectiveConfig, seed: int, prior: CorePrior | None
) -> Objective:
    return Flyp(classifier, cfg, seed)


register_objective(
    ObjectiveSpec(
        "flyp",
        "contrastive fine-tuning with the default template prompts (FLYP)",
        _flyp,
        label="FLYP",
        knobs=("mask_same_class",),
    )
)


def _drm(
    classifier: Classifier, cfg: ObjectiveConfig, seed: int, prior: CorePrior | None
) -> Objective:
    if prior is None:
        raise ValueError("the drm objective needs a CorePrior")
    return Drm(classifier, cfg, seed, prior)


register_objective(
    ObjectiveSpec(
        "drm",
        "dual risk minimization: FLYP + lambda * core-description worst-case risk",
        _drm,
        label="DRM (dual risk minimisation)",
        needs_descriptions=True,
        needs_prior=True,
        knobs=(
            "wrm",
            "lam",
            "pc_mode",
            "pc_norm",
            "pc_temperature",
            "pc_head",
            "mask_same_class",
        ),
    )
)


def catalog() -> list[dict[str, Any]]:
    """Every registered objective as plain data (``GET /objectives``): capabilities and knobs."""
    return [describe(spec) for spec in OBJECTIVES.values()]


def describe(spec: ObjectiveSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "label": spec.title,
        "description": spec.description,
        "trains": spec.trains,
        "needs_descriptions": spec.needs_descriptions,
        "needs_prior": spec.needs_prior,
        "learned_head": spec.learned_head,
        "trains_text": spec.trains_text,
        "knobs": [knob_schema(name) for name in spec.knobs],
    }


def build_objective(
    cfg: ObjectiveConfig, classifier: Classifier, seed: int, prior: CorePrior | None = None
) -> Objective:
    """The objective ``cfg.name`` names; ``prior`` when its spec ``needs_prior`` (see
    ``CorePrior``). The config checked the name against the registry when it was built.
    """
    objective: Objective = objective_spec(cfg.name).build(classifier, cfg, seed, prior)
    return objective
