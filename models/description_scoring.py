"""Score candidate class descriptions with the frozen backbone and propose a set per class.

DRM weighs each training image by the frozen concept head's p_c of its true class, so a class's
descriptions are only as useful as the frozen model's ability to pick its images out with them.
Before any training, every candidate sentence is measured on the *training* images (never a
validation, test or OOD split): the concept head is built with the candidate alone as its
class's row and every other class's reference row (its accepted descriptions when given, else
its template prompts that name it), and we read

- ``top1``: the share of the class's images that head assigns to the class;
- ``accuracy``: that head's top-1 over *all* training images: a generic or background sentence
  that also matches other classes' images takes them, and this drops;
- ``margin``: the mean cosine gap, on the class's images, between the candidate and the best
  other class's row (how clearly it wins, not only whether);
- with groups (a dataset's domains, locations, backgrounds): ``group_top1`` per group and its
  worst, ``worst_group_top1``: a sentence about a context that only some groups show does well
  on those and badly on the rest.

The same numbers for the class's **baseline**, its template prompts naming the class ("a photo
of a {c}."), are the bar. ``RULE`` (``ScoringRule``): a candidate is kept when it is not worse
than the baseline by more than ``top1_tolerance`` in top-1, ``accuracy_tolerance`` in accuracy,
``margin_tolerance`` in margin and, with groups, ``group_tolerance`` in worst-group top-1. The
kept ones, best accuracy first (then margin), up to ``max_per_class``, are the class's proposed
set; a class none of whose candidates passes keeps its best one, flagged, so the proposal has
every class. A class the proposed set's own concept head leaves weak (models.diagnostics) is
flagged too: the rule is relative, and where the baseline itself fails, what passes may be no
better. Every dropped candidate is listed with the reasons, in numbers.

Cost: the training images are embedded once and every distinct text once; each candidate is
then one [N, K] argmax. Image embedding dominates (see docs/guides/descriptions.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.diagnostics import description_diagnostics
from models.errors import ConfigError
from models.templates import fill

# Candidates that name the class, as the DRM release's iWildCam descriptions start with it.
CANDIDATE_TEMPLATES = (
    "a photo of a {c}.",
    "a {c}.",
    "a close-up photo of a {c}.",
    "a photo of the {c}, showing its whole shape.",
)
# The baseline each candidate must not fall far below: the class named in a photo template.
BASELINE_TEMPLATES = ("a photo of a {c}.",)
Encode = Callable[[Sequence[str]], Tensor]


@dataclass(frozen=True)
class ScoringRule:
    """When a candidate is kept: how much worse than its class's template baseline it may be."""

    top1_tolerance: float = 0.10
    accuracy_tolerance: float = 0.02
    margin_tolerance: float = 0.02
    group_tolerance: float = 0.15
    max_per_class: int = 5
    # Groups with fewer of the class's images than this are too small to judge evenness on.
    min_group_images: int = 3

    def __post_init__(self) -> None:
        for name in ("top1_tolerance", "accuracy_tolerance", "margin_tolerance", "group_tolerance"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"must lie in [0, 1], got {value}", key=name)
        if self.max_per_class < 1:
            raise ConfigError("must be at least 1", key="max_per_class")
        if self.min_group_images < 1:
            raise ConfigError("must be at least 1", key="min_group_images")


RULE = ScoringRule()


def template_candidates(
    classnames: Sequence[str], templates: Sequence[str] = CANDIDATE_TEMPLATES
) -> dict[str, list[str]]:
    """Candidates that name each class: ``templates`` filled with its name."""
    return {c: [fill(t, c) for t in templates] for c in classnames}


def check_candidates(
    classnames: Sequence[str], candidates: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """``candidates`` per class, stripped and without repeats; a ConfigError naming unknown
    classes, classes without any candidate, and texts that are empty."""
    unknown = [c for c in candidates if c not in classnames]
    if unknown:
        raise ConfigError(f"unknown class(es) {unknown}; the classes are {list(classnames)}")
    missing = [c for c in classnames if not candidates.get(c)]
    if missing:
        raise ConfigError(f"no candidates for class(es) {missing}")
    result: dict[str, list[str]] = {}
    for c in classnames:
        texts = [str(t).strip() for t in candidates[c]]
        if not all(texts):
            raise ConfigError(f"class {c!r}: a candidate is an empty text")
        result[c] = list(dict.fromkeys(texts))
    return result


def score_candidates(
    features: Tensor,
    labels: Sequence[int],
    classnames: Sequence[str],
    candidates: Mapping[str, Sequence[str]],
    encode: Encode,
    *,
    groups: Sequence[str | None] | None = None,
    reference: Mapping[str, Sequence[str]] | None = None,
    baseline_templates: Sequence[str] = BASELINE_TEMPLATES,
    rule: ScoringRule = RULE,
    logit_scale: float = 100.0,
) -> dict[str, Any]:
    """Score every candidate and propose a set per class (see the module's docstring).

    ``features``: [N, D] L2-normalised image features of the training images; ``labels`` their
    classes; ``groups`` their groups (None: no groups); ``encode`` texts -> [M, D] normalised
    embeddings (called once); ``reference``: the accepted descriptions other classes are
    measured against (default: their template baselines). JSON-ready.
    """
    pool = check_candidates(classnames, candidates)
    if features.ndim != 2 or features.shape[0] != len(labels) or not len(labels):
        raise ConfigError(f"features of shape {tuple(features.shape)} for {len(labels)} images")
    k = len(classnames)
    baseline = {c: [fill(t, c) for t in baseline_templates] for c in classnames}
    refs = {c: list((reference or {}).get(c) or baseline[c]) for c in classnames}
    texts = list(dict.fromkeys([*_flat(pool), *_flat(baseline), *_flat(refs)]))
    started = time.perf_counter()
    embedded = encode(texts)
    encode_s = time.perf_counter() - started
    index = {t: i for i, t in enumerate(texts)}
    features = features.float()
    sims = features @ embedded.float().t()  # [N, texts]: every cosine the scores need
    ref_sims = features @ _rows(embedded, index, [refs[c] for c in classnames]).t()
    base_sims = features @ _rows(embedded, index, [baseline[c] for c in classnames]).t()
    target = torch.as_tensor(list(labels), dtype=torch.long)
    group_of = list(groups) if groups is not None and any(g is not None for g in groups) else None
    measure = _Measure(ref_sims, target, group_of, rule)
    per_class: dict[str, Any] = {}
    for c, name in enumerate(classnames):
        base = measure(c, base_sims[:, c])
        scored = [{"text": t, **measure(c, sims[:, index[t]])} for t in pool[name]]
        per_class[name] = _propose(base, scored, rule)
    proposed = {name: per_class[name]["proposed"] for name in classnames}
    proposed_rows = _rows(embedded, index, [proposed[c] for c in classnames])
    head = description_diagnostics(
        (logit_scale * features @ proposed_rows.t()).softmax(dim=1), list(labels), classnames
    )
    for name in head["weak"]:
        # The rule is relative to the baseline: where the baseline itself fails (a backbone that
        # cannot name the class), what passes may be no better. The proposal's own diagnostics
        # say so.
        per_class[name]["weak"] = True
        per_class[name]["note"] = (
            f"the proposed set's concept head gets "
            f"{head['per_class'][name]['concept_top1']:.0%} of its images, below the weak "
            f"threshold {head['weak_threshold']:.0%}"
        )
    default_top1 = float((base_sims.argmax(dim=1) == target).float().mean())
    return {
        "images": len(labels),
        "classes": k,
        "candidates": sum(len(v) for v in pool.values()),
        "groups": len(set(group_of)) if group_of is not None else 0,
        "rule": asdict(rule),
        "baseline_templates": list(baseline_templates),
        "reference": "accepted descriptions" if reference else "baseline templates",
        "proposed": proposed,
        "proposed_concept_top1": head["concept_top1"],
        "baseline_top1": round(default_top1, 4),
        "weak_classes": [c for c in classnames if per_class[c]["weak"]],
        "diagnostics": head,
        "per_class": per_class,
        "seconds": {"texts": round(encode_s, 3), "texts_encoded": len(texts)},
    }


def _flat(groups: Mapping[str, Sequence[str]]) -> list[str]:
    return [t for texts in groups.values() for t in texts]


def _rows(embedded: Tensor, index: Mapping[str, int], prompts: Sequence[Sequence[str]]) -> Tensor:
    """One row per class: the renormalised mean of its texts' embeddings (models.heads)."""
    rows = [embedded[[index[t] for t in texts]].float().mean(dim=0) for texts in prompts]
    return F.normalize(torch.stack(rows), dim=-1)


class _Measure:
    """A class's row replaced by one text's cosines: top-1, accuracy, margin, groups."""

    def __init__(
        self, ref_sims: Tensor, target: Tensor, groups: list[str | None] | None, rule: ScoringRule
    ) -> None:
        self.ref_sims, self.target, self.groups, self.rule = ref_sims, target, groups, rule

    def __call__(self, c: int, column: Tensor) -> dict[str, Any]:
        logits = self.ref_sims.clone()
        logits[:, c] = column
        correct = logits.argmax(dim=1) == self.target
        rows = self.target == c
        others = torch.cat([self.ref_sims[:, :c], self.ref_sims[:, c + 1 :]], dim=1)
        margin = column[rows] - others[rows].max(dim=1).values if others.shape[1] else column[rows]
        taken = (logits.argmax(dim=1) == c) & ~rows
        scores: dict[str, Any] = {
            "top1": _share(correct[rows]),
            "accuracy": _share(correct),
            "margin": round(float(margin.mean()), 4) if rows.any() else 0.0,
            "takes_other": _share(taken[~rows]),
        }
        if self.groups is not None:
            by_group = self._groups(correct, rows)
            scores["group_top1"] = by_group
            scores["worst_group_top1"] = min(by_group.values()) if by_group else None
        return scores

    def _groups(self, correct: Tensor, rows: Tensor) -> dict[str, float]:
        assert self.groups is not None
        result: dict[str, float] = {}
        for group in sorted({g for g in self.groups if g is not None}):
            mask = rows & torch.as_tensor([g == group for g in self.groups])
            if int(mask.sum()) >= self.rule.min_group_images:
                result[group] = _share(correct[mask])
        return result


def _share(values: Tensor) -> float:
    return round(float(values.float().mean()), 4) if values.numel() else 0.0


def _propose(
    base: dict[str, Any], scored: list[dict[str, Any]], rule: ScoringRule
) -> dict[str, Any]:
    """The class's candidates with the reasons each fails the rule; the kept ones, best first,
    up to the cap; the best of a weak pool when none is kept."""
    for item in scored:
        item["reasons"] = _reasons(item, base, rule)
    ranked = sorted(scored, key=lambda s: (-s["accuracy"], -s["margin"], -s["top1"]))
    passing = [s for s in ranked if not s["reasons"]]
    weak = not passing
    kept = passing[: rule.max_per_class] if passing else ranked[:1]
    for item in ranked:
        if item in kept:
            item["kept"] = True
            if weak:
                item["reasons"] = ["kept as the best of a pool where none passes", *item["reasons"]]
        else:
            item["kept"] = False
            if not item["reasons"]:
                item["reasons"] = [f"passes, but {rule.max_per_class} better ones are kept"]
    return {
        "baseline": base,
        "weak": weak,
        "proposed": [s["text"] for s in kept],
        "candidates": ranked,
    }


def _reasons(item: dict[str, Any], base: dict[str, Any], rule: ScoringRule) -> list[str]:
    reasons = []
    checks = (
        ("top1", rule.top1_tolerance, "top-1 on its class"),
        ("accuracy", rule.accuracy_tolerance, "accuracy over all classes (it takes others')"),
        ("margin", rule.margin_tolerance, "margin"),
        ("worst_group_top1", rule.group_tolerance, "worst-group top-1"),
    )
    for key, tolerance, what in checks:
        value, bar = item.get(key), base.get(key)
        if value is None or bar is None:
            continue
        if value < bar - tolerance:
            reasons.append(f"{what} {value:.3f} is below the baseline's {bar:.3f} - {tolerance:g}")
    return reasons


def score_dataset(
    cfg: Any,
    candidates: Mapping[str, Sequence[str]],
    *,
    reference: Mapping[str, Sequence[str]] | None = None,
    rule: ScoringRule = RULE,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """``score_candidates`` on ``cfg``'s dataset's training split (``data.train_split``) with
    ``cfg``'s frozen backbone: what the worker's evaluation and the CLI run. A training split
    that is also the validation, a test or an OOD split is refused: the proposal must not have
    seen what it will be judged on."""
    # Imported here: the pipeline pulls in training code the pure scoring above does not need.
    from models.data import ImageDataset, open_dataset
    from models.evaluation import image_features
    from models.heads import encode_texts
    from models.pipeline import build_classifier

    data = cfg.data
    held_out = {data.val_split, "test", *data.ood_splits}
    if data.train_split in held_out or data.train_split.startswith(("ood", "test", "val")):
        raise ConfigError(
            f"scoring reads the training images only, and {data.train_split!r} is held out",
            key="data.train_split",
        )
    ds = open_dataset(data.path, within=data.within)
    samples = ds.split(data.train_split)
    pool = check_candidates(ds.classnames, candidates)
    classifier = build_classifier(cfg, ds.classnames, {c: (c,) for c in ds.classnames})
    started = time.perf_counter()
    plain = ImageDataset(samples, ds.classnames, classifier.backbone.transform(train=False))
    features, labels = image_features(
        classifier, plain, num_workers=data.num_workers, should_stop=should_stop
    )
    images_s = time.perf_counter() - started
    device = classifier.device

    def encode(texts: Sequence[str]) -> Tensor:
        return encode_texts(classifier.backbone, texts, device).cpu()

    started = time.perf_counter()
    result = score_candidates(
        features,
        labels.tolist(),
        ds.classnames,
        pool,
        encode,
        groups=[s.group for s in samples],
        reference=reference,
        rule=rule,
        logit_scale=float(classifier.clip.logit_scale.detach().exp()),
    )
    result["split"] = data.train_split
    result["seconds"].update(
        images=round(images_s, 3), scoring=round(time.perf_counter() - started, 3)
    )
    return result
