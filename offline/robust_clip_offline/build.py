"""The offline zero-shot backbone's build: assemble, align, write and evaluate.

Real pretrained towers (``assemble``) aligned LiT-style on a captioned corpus (``align``) give an
ordinary, self-contained open_clip ``local-dir`` folder that ``create_backbone``, ``finetune``
and artifacts accept, with ``backbone.json`` (``card``: provenance and zero-shot figures) beside
it. The library reaches this only through ``models.backbone.offline_builder``.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from models.artifacts import swap_into_place
from models.backbone import (
    DEFAULT_BACKBONE_CACHE,
    OFFLINE_BACKBONE,
    OPEN_CLIP_CONFIG,
    Backbone,
    create_backbone,
    write_open_clip_config,
)
from models.config import BackboneConfig
from robust_clip_offline.align import align, encode_corpus
from robust_clip_offline.assemble import OfflineBuildConfig, assemble
from robust_clip_offline.card import CARD, build_card, format_table, zero_shot_table
from robust_clip_offline.data import ImageSet, load_source

# What models.cli's build-offline-backbone uses (through models.backbone.offline_builder).
__all__ = [
    "CARD",
    "DEFAULT_FOLDER",
    "OfflineBuildConfig",
    "build_offline_backbone",
    "ensure_offline_backbone",
    "format_table",
    "is_built",
]

WEIGHTS = "open_clip_model.safetensors"
DEFAULT_FOLDER = DEFAULT_BACKBONE_CACHE / OFFLINE_BACKBONE

Progress = Callable[[str], None]


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
    """Build only when the folder is missing (or ``force``): tests and demos reuse the cache.

    Callers that start at once (a test run beside a demo) build once: the others wait on a
    lock file beside the folder and then find the finished folder.
    """
    target = Path(folder)
    if is_built(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
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
