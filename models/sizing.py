"""How big a model is, from its ``open_clip_config.json`` and its safetensors headers, before
anything is built.

An artifact from elsewhere is sized and matched here without allocating a single weight:

1. ``config_floor``: the parameters the config's towers need at least (their transformer blocks,
   embeddings and patch projection), from the config's numbers alone. A config of billions of
   parameters is refused here, in microseconds, whatever its weights hold.
2. ``read_header``: each safetensors file's tensors (name, dtype, shape) from its JSON header
   only, length-checked before it is read; the library validates the offsets against the file,
   so a header cannot claim more bytes than the file has.
3. ``expected_state``: the config's model built on PyTorch's ``meta`` device: open_clip's own
   constructors (so its own names and shapes, exactly what a strict ``load_state_dict`` checks),
   with no storage behind a single tensor. Only configs that passed 1 (and a layer count that
   bounds the build's time) get here.

So a strict load needs nothing this does not check: every name, shape and dtype kind is
compared, and the weights' size is known from headers. Building the real model (the
``load_artifact`` an import used to run in the API process) adds no check, only gigabytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors import SafetensorError, safe_open

from models.backbone import (
    LOCAL_DIR,
    _hf_text_overrides,
    _quiet_open_clip,
    register_builtin_configs,
)
from models.errors import ArtifactError

# Import limit by default: a ViT-L-14 (428 M parameters) fits, a ViT-H-14 (986 M) does not.
DEFAULT_MAX_PARAMS = 500_000_000
# A safetensors header is JSON of about 120 bytes a tensor (ViT-bigG-14: 974 tensors, 120 KB).
MAX_HEADER_BYTES = 16 * 1024**2
# Transformer blocks (or ResNet stages' blocks) over both towers. Building even on the meta
# device costs about 10 ms of Python a block; the largest open_clip models have under 100.
MAX_LAYERS = 256
# safetensors dtypes a floating-point parameter may be stored in (load_state_dict converts).
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


class ArtifactTooLarge(ArtifactError):
    """The model is past the caller's parameter limit (its count and the limit attached)."""

    def __init__(self, message: str, parameters: int, limit: int) -> None:
        super().__init__(message)
        self.parameters = parameters
        self.limit = limit


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_header(path: Path, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, TensorInfo]:
    """Every tensor's dtype and shape from a safetensors file's header; no tensor is read.

    The header's length (its first 8 bytes) is checked against ``max_header_bytes`` and the file
    before the library parses it: a 1 TB claim costs nothing. The library then refuses offsets
    that do not tile the file exactly, so the shapes account for the file's bytes.
    """
    name = path.name
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
        size = path.stat().st_size
        if length > max_header_bytes or length > size - 8:
            raise ArtifactError(
                f"{name} is not a readable safetensors file: its header claims {length} bytes "
                f"(at most {max_header_bytes}, and the file has {size})"
            )
        with safe_open(str(path), framework="pt") as st:
            return {
                key: TensorInfo(
                    str(st.get_slice(key).get_dtype()), tuple(st.get_slice(key).get_shape())
                )
                for key in st.keys()  # noqa: SIM118 (a safe_open handle is not a Mapping)
            }
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{name} is not a readable safetensors file: {exc}") from exc


def parameter_count(tensors: Mapping[str, TensorInfo]) -> int:
    return sum(info.numel for info in tensors.values())


def check_limit(what: str, parameters: int, limit: int) -> None:
    if parameters > limit:
        raise ArtifactTooLarge(
            f"{what} {parameters:,} parameters, over the import limit of {limit:,}",
            parameters,
            limit,
        )


# --- what the config needs at least, from its numbers ---


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ArtifactError(f"open_clip_config.json: {what} is not a non-negative integer")
    return value


def _pair(value: Any, what: str) -> tuple[int, int]:
    if isinstance(value, list | tuple) and len(value) == 2:
        return _int(value[0], what), _int(value[1], what)
    side = _int(value, what)
    return side, side


def _ratio(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1e6:
        raise ArtifactError(f"open_clip_config.json: {what} is not a usable ratio")
    return float(value)


def _blocks(layers: int, width: int, mlp_ratio: float) -> int:
    # Attention's q, k, v and output projections, and the MLP's two matrices: every open_clip
    # block has them, whatever its norms, biases and layer scales add.
    return layers * (4 * width * width + 2 * width * int(width * mlp_ratio))


def _vision_floor(cfg: CLIPVisionCfg) -> tuple[int, int]:
    """(parameters at least, blocks) of the vision tower; (0, 0) for a timm tower, whose size a
    registered name fixes."""
    if cfg.timm_model_name:
        return 0, 0
    if isinstance(cfg.layers, list | tuple):  # a ModifiedResNet: its stages' block counts
        return 0, sum(_int(n, "vision_cfg.layers") for n in cfg.layers)
    width, layers = _int(cfg.width, "vision_cfg.width"), _int(cfg.layers, "vision_cfg.layers")
    image = _pair(cfg.image_size, "vision_cfg.image_size")
    patch = _pair(cfg.patch_size, "vision_cfg.patch_size")
    if 0 in patch:
        raise ArtifactError("open_clip_config.json: vision_cfg.patch_size is 0")
    grid = (image[0] // patch[0]) * (image[1] // patch[1])
    blocks = _blocks(layers, width, _ratio(cfg.mlp_ratio, "vision_cfg.mlp_ratio"))
    # The patch projection and the positional embedding (learnt or sin-cos: a parameter both).
    return blocks + 3 * patch[0] * patch[1] * width + (grid + 1) * width, layers


def _text_floor(cfg: CLIPTextCfg, hf_config: Mapping[str, Any] | None) -> tuple[int, int]:
    if cfg.hf_model_name:
        return _hf_floor(hf_config or {})
    width, layers = _int(cfg.width, "text_cfg.width"), _int(cfg.layers, "text_cfg.layers")
    blocks = _blocks(layers, width, _ratio(cfg.mlp_ratio, "text_cfg.mlp_ratio"))
    vocab = _int(cfg.vocab_size, "text_cfg.vocab_size")
    context = _int(cfg.context_length, "text_cfg.context_length")
    return blocks + (vocab + context) * width, layers


def _hf_floor(config: Mapping[str, Any]) -> tuple[int, int]:
    """A Hugging Face encoder's floor from its config.json (BERT-style names; what is absent
    counts as 0, and a model of another family still gets its exact check from the meta build)."""
    hidden = _int(config.get("hidden_size", 0), "config.json hidden_size")
    layers = _int(config.get("num_hidden_layers", 0), "config.json num_hidden_layers")
    inner = _int(config.get("intermediate_size", 0), "config.json intermediate_size")
    vocab = _int(config.get("vocab_size", 0), "config.json vocab_size")
    positions = _int(
        config.get("max_position_embeddings", 0), "config.json max_position_embeddings"
    )
    blocks = layers * (4 * hidden * hidden + 2 * hidden * inner)
    return blocks + (vocab + positions) * hidden, layers


def config_floor(
    model_cfg: Mapping[str, Any], hf_config: Mapping[str, Any] | None = None
) -> tuple[int, int]:
    """(parameters at least, transformer or ResNet blocks) of the model ``model_cfg`` describes,
    from its numbers alone; ``hf_config`` is a Hugging Face text tower's config.json.

    A floor, not a count: only what every variant of each tower has is added, so a config never
    needs fewer; ``expected_state`` gives the exact count once the floor has passed.
    """
    try:
        vision = CLIPVisionCfg(**dict(model_cfg["vision_cfg"]))
        text = CLIPTextCfg(**dict(model_cfg["text_cfg"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"open_clip_config.json does not describe a usable model: {exc}"
        ) from exc
    vision_params, vision_layers = _vision_floor(vision)
    text_params, text_layers = _text_floor(text, hf_config)
    return vision_params + text_params, vision_layers + text_layers


def check_layers(layers: int, tensors: int) -> None:
    """Refuse a config with more blocks than its weights could hold (every block has several
    tensors) or than ``MAX_LAYERS``: the meta build's time grows with them."""
    if layers > MAX_LAYERS or layers > tensors:
        raise ArtifactError(
            f"open_clip_config.json describes {layers} blocks, but the weights hold {tensors} "
            f"tensors (and at most {MAX_LAYERS} blocks are imported): not this model's config"
        )


# --- the exact names and shapes, built without storage ---


def expected_state(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict (meta tensors: names, shapes, dtypes, no storage) of the model that
    ``folder``'s ``open_clip_config.json`` describes, built by open_clip itself."""
    register_builtin_configs()
    name = LOCAL_DIR + str(folder)
    try:
        # Thread-local: other threads (the API serving) keep allocating on their own devices.
        with _quiet_open_clip(), torch.device("meta"):
            model = open_clip.create_model(
                name, load_weights=False, device="meta", **_hf_text_overrides(name)
            )
    except (KeyError, TypeError, ValueError, RuntimeError, AssertionError, OSError) as exc:
        # A config open_clip cannot build: hostile, or from another version of the code.
        raise ArtifactError(
            f"open_clip_config.json does not describe a usable model: {exc}"
        ) from exc
    return dict(model.state_dict())


def compare(name: str, found: Mapping[str, TensorInfo], wanted: Mapping[str, torch.Tensor]) -> None:
    """Refuse ``found`` (a file's header) unless it has exactly ``wanted``'s names and shapes,
    and a floating-point dtype exactly where the model has one."""
    extra, absent = sorted(set(found) - set(wanted)), sorted(set(wanted) - set(found))
    if extra or absent:
        raise ArtifactError(
            f"{name} does not match the model its config describes: unexpected keys "
            f"{extra[:5]}{' ...' if len(extra) > 5 else ''}, missing keys "
            f"{absent[:5]}{' ...' if len(absent) > 5 else ''}"
        )
    wrong = [
        f"{key} is {found[key].shape} (the config's model: {tuple(tensor.shape)})"
        for key, tensor in sorted(wanted.items())
        if found[key].shape != tuple(tensor.shape)
    ]
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise ArtifactError(
            f"{name} does not match its config (size mismatch): {'; '.join(wrong[:3])}{more}"
        )
    for key, tensor in sorted(wanted.items()):
        if (found[key].dtype in FLOAT_DTYPES) != tensor.is_floating_point():
            raise ArtifactError(f"{name}: {key} is stored as {found[key].dtype}")
