"""Aligning the assembled towers LiT-style on a captioned corpus (the build's training loop).

The text tower stays locked, the image tower too except its top ``unlocked_groups`` groups; the
two projections, those groups and the logit scale are trained contrastively on captioned renders
of real images (``robust_clip_offline.corpus``). Because everything below the trained parts is
locked, its outputs are computed once per render and caption and training runs on those cached
activations: a step costs a fraction of a second, and most of the wall time goes into the
towers' forward passes over the corpus.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from models.backbone import Backbone
from models.objectives import contrastive_per_sample
from models.train import cosine_with_warmup
from robust_clip_offline.assemble import MEAN, STD, OfflineBuildConfig
from robust_clip_offline.corpus import Render, iter_corpus
from robust_clip_offline.data import ImageSet

ENCODE_BATCH = 256


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
    with channels_last(locked):
        return locked(to_input(images)).float().contiguous().clone()


@contextmanager
def channels_last(module: nn.Module) -> Iterator[None]:
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
