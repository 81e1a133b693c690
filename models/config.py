"""Run configuration: frozen dataclasses, built from plain dicts (YAML, JSON, API payloads).

Nothing mutates a config; derive new ones with ``dataclasses.replace`` or ``with_overrides``.
Validation lives in ``__post_init__`` so every way of building a config checks the same rules,
and every error names the dotted key it is about.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

from models.errors import ConfigError
from models.json_values import json_safe
from models.objective_registry import DEFAULT_OBJECTIVE, objective_names
from models.seeding import MAX_SEED

WRM_READINGS = ("weight", "soft")
PC_MODES = ("cached", "per_step")
# prob: min-max over classes of the frozen model's concept-head probabilities (the paper, as a
# reviewer describes it); affinity: min-max over raw cosine affinities (our first reading).
PC_NORMS = ("prob", "affinity")
# Which frozen head p_c is read from: concept (DRM: the core-feature descriptions) or default
# (the template prompts: a control, DRM's soft reading becoming distillation towards zero-shot).
PC_HEADS = ("concept", "default")
WEIGHT_DECAY_ON = ("matrices", "all")
AMP_MODES = ("auto", "none", "bf16", "fp16")
SELECTION_RULES = ("tolerance", "best_id_val", "fixed", "paired")
SELECTION_METRICS = ("top1", "macro_f1", "worst_group_acc", "nll", "true_prob")
# Continuous per-image metrics: the mean over images of the true class's -log p and p. They
# have no binomial standard error, so the tolerance rule needs an explicit wise.tol with them.
CONTINUOUS_METRICS = ("nll", "true_prob")
LOWER_IS_BETTER = ("nll",)
# The paired rule's choice among the alphas (and heads) whose ID-validation top-1 a paired test
# cannot tell from the best's: the best NLL or mean true-class probability, or an end.
TIE_BREAKS = ("nll", "true_prob", "largest", "smallest")
# The heads a rule may choose to serve, and the dual-inference beta each is served with
# (dual: head.beta; default: beta 1, exactly the default head; concept: beta 0).
SERVED_HEADS = ("dual", "default", "concept")
DEFAULT_ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))

# Named bundles of settings, expanded before a config is built. A preset fixes the keys it names
# (it wins over any value given for them): API payloads arrive with every key filled in by its
# default, so "a key the user set" cannot be told from one nobody set.
# flyp-paper: FLYP as released (its loss without labels keeps same-class pairs as negatives,
# no gradient clipping, AdamW decay on every parameter).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "flyp-paper": {
        "objective": {"mask_same_class": False},
        "train": {"grad_clip": None, "weight_decay_on": "all"},
    },
}


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, key=key)


def _check_choice(value: str, choices: Sequence[str], key: str) -> None:
    _check(value in choices, key, f"must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class BackboneConfig:
    """Which open_clip model to start from and what of it to train.

    ``arch`` is an open_clip architecture (``ViT-B-16``), ``local-dir:/path``, ``hf-hub:org/repo``,
    or the path of one of our artifact folders. ``pretrained`` is an open_clip tag (``openai``), a
    checkpoint file (.pt/.safetensors), or None for random weights.
    """

    arch: str = "test-tiny-vit"
    pretrained: str | None = None
    freeze_text: bool = False
    # None trains the whole image tower; N unlocks only its top N groups (open_clip's LiT lock).
    image_unlocked_groups: int | None = None

    def __post_init__(self) -> None:
        _check(bool(self.arch), "backbone.arch", "must not be empty")
        groups = self.image_unlocked_groups
        _check(groups is None or groups >= 0, "backbone.image_unlocked_groups", "must be >= 0")


@dataclass(frozen=True)
class HeadConfig:
    """Zero-shot heads: prompt templates for the default head, beta for dual inference."""

    # A built-in template set name (see models.templates) or an explicit list with '{c}'.
    templates: str | tuple[str, ...] = "generic"
    beta: float = 0.5

    def __post_init__(self) -> None:
        _check(0.0 <= self.beta <= 1.0, "head.beta", f"must lie in [0, 1], got {self.beta}")
        if not isinstance(self.templates, str):
            _check(len(self.templates) > 0, "head.templates", "must not be an empty list")
            for t in self.templates:
                _check("{c}" in t, "head.templates", f"template {t!r} lacks the '{{c}}' slot")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The training objective, by registry name, with DRM's knobs."""

    name: str = DEFAULT_OBJECTIVE
    wrm: str = "weight"
    lam: float = 1.0
    pc_mode: str = "cached"
    pc_norm: str = "prob"
    # Multiplies the frozen model's logit scale inside p_c's softmax (pc_norm: prob only).
    pc_temperature: float = 1.0
    # The frozen head p_c comes from (PC_HEADS); the WRM term's own prompts stay the concept
    # descriptions either way.
    pc_head: str = "concept"
    # FLYP treats same-class pairs off the diagonal as false negatives; masking removes them.
    mask_same_class: bool = True
    # A name from PRESETS, expanded into the other keys when the config is built (from_dict).
    preset: str | None = None

    def __post_init__(self) -> None:
        _check_choice(self.name, objective_names(), "objective.name")
        _check_choice(self.wrm, WRM_READINGS, "objective.wrm")
        _check_choice(self.pc_mode, PC_MODES, "objective.pc_mode")
        _check_choice(self.pc_norm, PC_NORMS, "objective.pc_norm")
        _check_choice(self.pc_head, PC_HEADS, "objective.pc_head")
        _check(self.lam >= 0.0, "objective.lam", f"must be >= 0, got {self.lam}")
        temperature = self.pc_temperature
        _check(temperature > 0.0, "objective.pc_temperature", f"must be > 0, got {temperature}")
        if self.preset is not None:
            _check_choice(self.preset, tuple(PRESETS), "objective.preset")


@dataclass(frozen=True)
class Knob:
    """An ObjectiveConfig field as a form shows it: what it does and what it accepts (the
    checks above are what enforce it). Objectives list the knobs they read (ObjectiveSpec)."""

    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    exclusive_minimum: bool = False


KNOBS: dict[str, Knob] = {
    "wrm": Knob(
        "how the worst-case risk is read: weight (contrastive loss on description prompts "
        "weighted by p_c) or soft (cross-entropy against p_c)",
        WRM_READINGS,
    ),
    "lam": Knob("lambda: the loss is ERM + lambda * WRM", minimum=0.0),
    "pc_mode": Knob("p_c computed once per training image (cached) or at every step", PC_MODES),
    "pc_norm": Knob(
        "p_c from the frozen concept head's probabilities (prob) or raw cosines", PC_NORMS
    ),
    "pc_temperature": Knob(
        "multiplies the frozen model's logit scale inside p_c's softmax (pc_norm prob)",
        minimum=0.0,
        exclusive_minimum=True,
    ),
    "pc_head": Knob(
        "the frozen head p_c is read from: concept (the descriptions, DRM) or default (the "
        "template prompts: a control that makes soft a distillation towards zero-shot)",
        PC_HEADS,
    ),
    "mask_same_class": Knob("drop same-class pairs from the contrastive loss's negatives"),
}


def knob_schema(name: str) -> dict[str, Any]:
    """The knob ``name`` as plain data: its type, default and accepted values."""
    knob = KNOBS[name]
    hint = typing.get_type_hints(ObjectiveConfig)[name]
    kind = "choice" if knob.choices else {bool: "boolean", float: "number"}.get(hint, "string")
    return {
        "name": name,
        "type": kind,
        "default": getattr(ObjectiveConfig(), name),
        "choices": list(knob.choices) if knob.choices else None,
        "minimum": knob.minimum,
        "exclusive_minimum": knob.exclusive_minimum,
        "description": knob.help,
    }


@dataclass(frozen=True)
class DataConfig:
    """Where the images and the class descriptions are, and which splits play which role."""

    path: str = ""
    descriptions: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    ood_splits: tuple[str, ...] = ()
    # Random-resized-crop scale range used for training augmentation (FLYP: 0.9-1.0).
    crop_scale: tuple[float, float] = (0.9, 1.0)
    num_workers: int = 0
    check_images: bool = True
    # Off makes training views deterministic (eval preprocessing); used to check p_c caching.
    augment: bool = True
    # A folder every file of the dataset must resolve inside (symlinks followed); the service
    # sets it to the dataset's own root so a row or link cannot reach the rest of the server.
    within: str | None = None
    # Description diagnostics (models.diagnostics): the frozen concept head's accuracy per class
    # on the training images, in the card and the log. One pass over the training images, free
    # for DRM with cached p_c (the same pass).
    diagnose_descriptions: bool = True
    # The pre-training guard (models.diagnostics.near_chance): an objective that uses the frozen
    # concept head (DRM's p_c) fails before training when the diagnostics find it near chance;
    # True trains anyway (the served dual head still only warns).
    allow_weak_descriptions: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        _check(0.0 < lo <= hi <= 1.0, "data.crop_scale", "must satisfy 0 < lo <= hi <= 1")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: AdamW, cosine schedule with warm-up, clipping, accumulation."""

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-5
    weight_decay: float = 0.1
    # matrices: no decay on gains, biases, logit scale, heads (open_clip's recipe); all: AdamW's
    # decay on every trainable parameter, as FLYP's release does.
    weight_decay_on: str = "matrices"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    grad_accum: int = 1
    amp: str = "auto"
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0
    device: str = "auto"
    # Batch-norm layers (the offline backbone's EfficientNet, CLIP's ResNets) keep the running
    # statistics of the pretrained model instead of re-estimating them from small batches.
    freeze_norm_stats: bool = True
    # Speed switches, off by default (bench/train_step.py measures which help where):
    # NHWC weights and images for the convolutions, and torch.compile of the encoder.
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", "must be >= 1")
        _check(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1")
        _check(self.batch_size >= 2, "train.batch_size", "must be >= 2 (contrastive losses)")
        _check(self.lr > 0, "train.lr", "must be > 0")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check_choice(self.weight_decay_on, WEIGHT_DECAY_ON, "train.weight_decay_on")
        _check(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        clip = self.grad_clip
        _check(clip is None or clip > 0, "train.grad_clip", "must be > 0 or null")
        _check(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _check_choice(self.amp, AMP_MODES, "train.amp")
        _check(self.eval_every >= 0, "train.eval_every", "must be >= 0")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _check(0 <= self.seed <= MAX_SEED, "train.seed", f"must lie in [0, {MAX_SEED}]")


@dataclass(frozen=True)
class WiseConfig:
    """WiSE-FT: which mixing weights to evaluate and how to pick one."""

    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    # fixed: fixed_alpha whatever the curve says. tolerance: the smallest alpha whose
    # ID-validation metric is within tol of the best (a one-standard-error rule). best_id_val:
    # the highest ID-validation metric, ties to the smaller alpha. paired: see tie_break.
    # The service's default rule is this line and ``heads`` below: fixed 0.5 on the default
    # head, the reading with the best mean OOD at equal ID of the 27 studied on the benchmark's
    # 5 seeds x 5 methods x 3 tasks (bench/shift/results/2026-12-07-issue24/rules/rules.md):
    # +2.9 points of mean OOD (95% +1.8 to +4.0) over the earlier default (tolerance on the
    # dual head) at equal ID; on 300 validation images the rules that read the curve picked
    # their alphas on noise.
    selection: str = "fixed"
    # None: one binomial standard error of the best point, sqrt(m (1 - m) / n) on the n
    # validation images (for macro-F1 and worst-group accuracy an approximation).
    tol: float | None = None
    fixed_alpha: float = 0.5
    # What the rule maximises (nll: minimises), read from the served head on the validation
    # split (tolerance, best_id_val; paired tests top-1 and breaks ties by tie_break).
    metric: str = "top1"
    # paired (models.wiseft.select): among the alphas whose ID-validation top-1 a one-sided
    # paired sign test on the same images does not find worse than the best's at level
    # paired_level, the one tie_break prefers (see TIE_BREAKS).
    tie_break: str = "nll"
    paired_level: float = 0.05
    # The heads the rule may serve, chosen with the alpha on validation by the same rule; ties
    # go to the earlier one. ("dual",) serves dual inference at head.beta. The default head
    # (beta 1) had the higher mean OOD top-1 under 7 of the 9 rules studied (same study; the
    # concept head the dual head blends in is the weaker of the two).
    heads: tuple[str, ...] = ("default",)

    def __post_init__(self) -> None:
        _check(len(self.alphas) > 0, "wise.alphas", "must not be empty")
        for a in self.alphas:
            _check(0.0 <= a <= 1.0, "wise.alphas", f"every alpha must lie in [0, 1], got {a}")
        _check_choice(self.selection, SELECTION_RULES, "wise.selection")
        _check(0.0 <= self.fixed_alpha <= 1.0, "wise.fixed_alpha", "must lie in [0, 1]")
        if self.selection == "fixed" and all(abs(a - self.fixed_alpha) > 1e-9 for a in self.alphas):
            # The served alpha is always evaluated: the card reports its metrics.
            object.__setattr__(self, "alphas", tuple(sorted({*self.alphas, self.fixed_alpha})))
        _check(self.tol is None or self.tol >= 0.0, "wise.tol", f"must be >= 0, got {self.tol}")
        _check_choice(self.metric, SELECTION_METRICS, "wise.metric")
        _check(
            not (
                self.selection == "tolerance"
                and self.metric in CONTINUOUS_METRICS
                and self.tol is None
            ),
            "wise.tol",
            f"the tolerance rule on {self.metric!r} needs an explicit tol (no binomial error)",
        )
        _check(
            self.selection != "paired" or self.metric == "top1",
            "wise.metric",
            "the paired rule tests top-1 (set tie_break to choose by nll or true_prob)",
        )
        _check_choice(self.tie_break, TIE_BREAKS, "wise.tie_break")
        level = self.paired_level
        _check(0.0 < level < 1.0, "wise.paired_level", f"must lie in (0, 1), got {level}")
        _check(len(self.heads) > 0, "wise.heads", "must not be empty")
        for h in self.heads:
            _check_choice(h, SERVED_HEADS, "wise.heads")
        _check(len(set(self.heads)) == len(self.heads), "wise.heads", "must not repeat a head")


@dataclass(frozen=True)
class RunConfig:
    """Everything one fine-tuning run needs. ``output_dir`` receives the artifact."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wise: WiseConfig = field(default_factory=WiseConfig)
    output_dir: str = "runs/latest"


T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a plain mapping, refusing unknown keys by name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", key=prefix or None)
    if cls is RunConfig:
        data = expand_preset(data)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; known: {sorted(names)}", key=prefix or None)
    kwargs = {k: _coerce(hints[k], v, f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def expand_preset(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Set the keys ``objective.preset`` names to the preset's values.

    A resolved config (preset and its values) reads back unchanged. An unknown name is left for
    ObjectiveConfig to refuse by key.
    """
    objective = data.get("objective")
    name = objective.get("preset") if isinstance(objective, Mapping) else None
    if not isinstance(name, str) or name not in PRESETS:
        return data
    result = dict(data)
    for section, values in PRESETS[name].items():
        given = result.get(section) or {}
        if isinstance(given, Mapping):
            result[section] = {**given, **values}
    return result


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Coerce a YAML/JSON value to the annotated type, or say which key is wrong."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=f"{key}.")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value, key)
    if origin is tuple:
        return _coerce_tuple(args, value, key)
    return _coerce_scalar(tp, value, key)


def _coerce_union(args: tuple[Any, ...], value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _coerce(arg, value, key)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(f"{value!r} fits none of the accepted types ({'; '.join(errors)})", key=key)


def _coerce_tuple(args: tuple[Any, ...], value: Any, key: str) -> tuple[Any, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"expected a list, got {value!r}", key=key)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], v, key) for v in value)
    if len(value) != len(args):
        raise ConfigError(f"expected {len(args)} values, got {len(value)}", key=key)
    return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))


def _coerce_scalar(tp: Any, value: Any, key: str) -> Any:
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads "2e-5" (no dot) as a string; users mean the number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"expected {getattr(tp, '__name__', tp)}, got {value!r}", key=key)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain JSON/YAML-ready dict (tuples become lists)."""
    return json_safe(dataclasses.asdict(config))


def with_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict copy."""
    # A deep copy: the overrides below must not reach into the caller's nested dicts.
    result: dict[str, Any] = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set a sub-key of a {type(child).__name__}", key=dotted)
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return result


def load_run_config(path: str | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a YAML run config (or start from defaults when ``path`` is None) and apply overrides."""
    data: Mapping[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    return from_dict(RunConfig, with_overrides(data, overrides))
