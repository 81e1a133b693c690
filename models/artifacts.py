"""Artifacts: safetensors weights plus JSON. Nothing is pickled.

An artifact folder holds
- ``open_clip_config.json`` and ``open_clip_model.safetensors``: the served (WiSE-FT selected)
  weights, so the folder is also an open_clip ``local-dir:`` model and a valid base model;
- ``heads.safetensors``: the default and concept head rows, so loading encodes no prompts;
- ``finetuned.safetensors`` (trained runs): the alpha = 1 end, for later re-merging;
- ``zeroshot.safetensors`` (trained runs): the alpha = 0 end. Rebuilding it from the run's config
  is exact only where the same pretrained weights (or random-init seed and torch build) are at
  hand, which a registry API or another machine may not have; stored, re-merging is always exact;
- ``artifact.json``: the model card (classes, prompts, beta, alpha curve, metrics, provenance,
  and ``files``: the sha256 of every other file).
Folders are written under a temporary name and renamed into place: a reader never sees half.
``check_artifact`` is what a folder from elsewhere (an uploaded archive) must pass; it reads
JSON and safetensors headers only, never anything pickled, and builds no model (``sizing``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.backbone import (
    HF_CONFIG,
    HF_TEXT_FILES,
    LOCAL_DIR,
    OPEN_CLIP_CONFIG,
    build_from_open_clip_config,
    write_open_clip_config,
)
from models.errors import ArtifactError
from models.heads import Classifier
from models.json_values import json_safe
from models.sizing import (
    DEFAULT_MAX_PARAMS,
    FLOAT_DTYPES,
    TensorInfo,
    check_layers,
    check_limit,
    compare,
    config_floor,
    expected_state,
    parameter_count,
    read_header,
)
from models.wiseft import merge

FORMAT = "robust-clip-artifact/1"
CARD = "artifact.json"
WEIGHTS = "open_clip_model.safetensors"
HEADS = "heads.safetensors"
FINETUNED = "finetuned.safetensors"
ZEROSHOT = "zeroshot.safetensors"
# What a card's ``files`` may list: anything else in a folder from elsewhere is refused.
LISTABLE = frozenset({OPEN_CLIP_CONFIG, WEIGHTS, HEADS, FINETUNED, ZEROSHOT, *HF_TEXT_FILES})
# The resolved run config `python -m models finetune` writes beside the artifact's files, to
# repeat the run: not part of the artifact (the card holds the same config).
RUN_CONFIG = "config.yaml"
# Formats that run code when loaded (pickle, torch.save, joblib, numpy object arrays).
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".ckpt", ".npy", ".npz", ".joblib")
MAX_CARD_BYTES = 64 * 1024**2
MAX_IMAGE_SIDE = 4096


@dataclass
class Artifact:
    classifier: Classifier
    card: dict[str, Any]
    path: Path


def _contiguous(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    return {
        k.removeprefix(prefix): v.detach().cpu().contiguous()
        for k, v in state.items()
        if k.startswith(prefix)
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_digest(folder: str | Path) -> str:
    """sha256 of an artifact's card, which holds the sha256 of every other file it has: the
    digest the registry gives a version."""
    return hashlib.sha256((Path(folder) / CARD).read_bytes()).hexdigest()


def classifier_card(classifier: Classifier) -> dict[str, Any]:
    """The part of the card that rebuilding the classifier needs."""
    return {
        "format": FORMAT,
        "backbone": classifier.backbone.source,
        "preprocess": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in classifier.backbone.preprocess_cfg.items()
        },
        "classnames": list(classifier.classnames),
        "templates": list(classifier.templates),
        "descriptions": {c: list(d) for c, d in classifier.descriptions.items()},
        "beta": classifier.beta,
        "learned_head": classifier.learned_head,
    }


def save_artifact(
    folder: str | Path,
    classifier: Classifier,
    card: Mapping[str, Any],
    finetuned_state: Mapping[str, Tensor] | None = None,
    overwrite: bool = True,
    zeroshot_state: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write the artifact atomically; ``card`` adds metrics, curve, provenance to the core.

    ``finetuned_state`` and ``zeroshot_state`` are the WiSE-FT ends (``classifier.state_dict()``
    keys), kept so the artifact can be re-merged exactly at another alpha.
    """
    target = Path(folder)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} exists and overwrite is off")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_files(tmp, classifier, card, {FINETUNED: finetuned_state, ZEROSHOT: zeroshot_state})
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_files(
    folder: Path,
    classifier: Classifier,
    card: Mapping[str, Any],
    ends: Mapping[str, Mapping[str, Tensor] | None],
) -> None:
    state = classifier.state_dict()
    write_open_clip_config(classifier.backbone, folder)
    # A Hugging Face text tower's config and tokenizer travel with the weights: the folder must
    # load on a machine that has never seen the tower's package.
    for name, content in classifier.backbone.extra_files.items():
        (folder / name).write_bytes(content)
    save_file(_contiguous(state, "clip."), str(folder / WEIGHTS))
    heads = {"default_head": state["default_head"], "concept_head": state["concept_head"]}
    save_file(_contiguous(heads), str(folder / HEADS))
    # The config is listed too: with it, the card's digest names every byte of the artifact.
    files = [OPEN_CLIP_CONFIG, WEIGHTS, HEADS, *sorted(classifier.backbone.extra_files)]
    for name, end in ends.items():
        if end is not None:
            save_file(_contiguous(end), str(folder / name))
            files.append(name)
    full = {**classifier_card(classifier), **card}
    full["files"] = {name: _sha256(folder / name) for name in files}
    with open(folder / CARD, "w", encoding="utf-8") as fh:
        json.dump(json_safe(full), fh, indent=2, sort_keys=False)


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``, replacing an existing folder with the smallest window.

    Artifacts and the service's artifact store swap folders with it.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def rewrite_card(folder: str | Path, card: Mapping[str, Any]) -> None:
    """Replace the card of an artifact, keeping its ``files`` (their sha256 still hold): a new
    card under a temporary name, renamed over the old one."""
    path = Path(folder)
    files = read_card(path).get("files", {})
    tmp = path / f".{CARD}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(json_safe({**card, "files": files}), fh, indent=2, sort_keys=False)
    os.replace(tmp, path / CARD)


def read_card(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / CARD
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an artifact: {CARD} is missing")
    try:
        with open(path, encoding="utf-8") as fh:
            card: dict[str, Any] = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} cannot be read: {exc}") from exc
    if card.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unknown format {card.get('format')!r}, expected {FORMAT}")
    return card


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Read a safetensors file; a missing or corrupt one is an ArtifactError naming it."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a readable safetensors file: {exc}") from exc


def load_artifact(
    folder: str | Path, device: str | torch.device = "cpu", verify: bool = False
) -> Artifact:
    """Rebuild the classifier from the card and load its weights with strict key checks.

    ``verify`` also checks each file's sha256 against the card (reads every byte once).
    """
    path = Path(folder)
    card = read_card(path)
    if verify:
        _verify_files(path, card)
    with open(path / OPEN_CLIP_CONFIG, encoding="utf-8") as fh:
        config = json.load(fh)
    backbone = build_from_open_clip_config(config, path)
    backbone.source = dict(card["backbone"])
    try:
        backbone.model.load_state_dict(load_weights(path / WEIGHTS), strict=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path / WEIGHTS} does not match its config: {exc}") from exc
    backbone.model.to(device)
    heads = load_weights(path / HEADS)
    classifier = Classifier(
        backbone,
        card["classnames"],
        card["templates"],
        card["descriptions"],
        beta=float(card["beta"]),
        learned_head=bool(card["learned_head"]),
        heads=(heads["default_head"], heads["concept_head"]),
    )
    classifier.eval()
    return Artifact(classifier, card, path)


def _verify_files(path: Path, card: Mapping[str, Any]) -> None:
    for name, expected in card.get("files", {}).items():
        if not (path / name).is_file():
            raise ArtifactError(f"{path / name} is missing")
        if _sha256(path / name) != expected:
            raise ArtifactError(f"{path / name} does not match the checksum in its card")


def verify_files(folder: str | Path) -> dict[str, Any]:
    """The card, once every file it lists matches its sha256 (ArtifactError naming one that
    does not)."""
    card = read_card(folder)
    _verify_files(Path(folder), card)
    return card


# --- artifacts from elsewhere ---


@dataclass(frozen=True)
class CheckedArtifact:
    """An artifact from elsewhere that passed ``check_artifact``, and its size."""

    card: dict[str, Any]
    parameters: int  # of the served model: its weights and heads
    weight_bytes: int  # of its safetensors files, as stored


def check_artifact(folder: str | Path, max_params: int = DEFAULT_MAX_PARAMS) -> CheckedArtifact:
    """Check an artifact that came from elsewhere (an uploaded archive) without building it:

    no pickled file anywhere (refused by name or content, never opened), no file or folder the
    card does not list, a card with the fields loading needs, the model's size (from the config's
    numbers, then the safetensors headers: ``ArtifactTooLarge`` past ``max_params`` parameters),
    every listed file's sha256, the weights' names and shapes against the architecture of
    ``open_clip_config.json`` (built on the meta device: no storage), the heads against the
    classes and the embedding width, and the WiSE-FT ends against the model. Every refusal is
    an ArtifactError naming the file (or key) at fault. ``models.sizing`` says why a strict
    load of the real model would check nothing more.
    """
    path = Path(folder)
    _refuse_pickles(path)
    if (path / CARD).is_file() and (path / CARD).stat().st_size > MAX_CARD_BYTES:
        raise ArtifactError(f"{CARD} is over {MAX_CARD_BYTES} bytes")
    card = read_card(path)
    _check_listing(path, card)
    _check_card_fields(card)
    config = _read_json(path / OPEN_CLIP_CONFIG)
    model_cfg = _check_config(config)
    headers = {name: read_header(path / name) for name in _weight_files(card)}
    parameters = _check_size(path, model_cfg, headers, max_params)
    _verify_files(path, card)
    state = expected_state(path)
    compare(WEIGHTS, headers[WEIGHTS], state)
    heads = _check_heads(headers[HEADS], len(card["classnames"]), model_cfg["embed_dim"])
    whole = {**{f"clip.{key}": tensor for key, tensor in state.items()}, **heads}
    for name in (FINETUNED, ZEROSHOT):
        if name in headers:
            compare(name, headers[name], whole)
    _check_tokenizer(path)
    weight_bytes = sum((path / name).stat().st_size for name in headers)
    return CheckedArtifact(card, parameters, weight_bytes)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise ArtifactError(f"{path.name} is over {MAX_CARD_BYTES} bytes")
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are both
        raise ArtifactError(f"{path.name} cannot be read: {exc}") from exc
    if not isinstance(value, dict):
        raise ArtifactError(f"{path.name} is not a JSON object")
    return value


def _check_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's ``model_cfg`` once its shape and image size are usable (the image size
    before anything is built: a served image is resized to it, and it sizes the positional
    embedding)."""
    model_cfg, preprocess = config.get("model_cfg"), config.get("preprocess_cfg")
    if not (
        isinstance(model_cfg, dict)
        and isinstance(preprocess, dict)
        and isinstance(model_cfg.get("vision_cfg"), dict)
        and isinstance(model_cfg.get("text_cfg"), dict)
    ):
        raise ArtifactError(
            f"{OPEN_CLIP_CONFIG} does not describe a usable model: it needs 'model_cfg' (with "
            "'vision_cfg' and 'text_cfg') and 'preprocess_cfg'"
        )
    if not _positive_ints([model_cfg.get("embed_dim")], None):
        raise ArtifactError(f"{OPEN_CLIP_CONFIG}: 'embed_dim' is not a positive integer")
    for size in (preprocess.get("size"), model_cfg["vision_cfg"].get("image_size", 224)):
        if not _positive_ints(size if isinstance(size, list) else [size], MAX_IMAGE_SIDE):
            raise ArtifactError(
                f"{OPEN_CLIP_CONFIG}: image size missing or over {MAX_IMAGE_SIDE} pixels a side"
            )
    return model_cfg


def _positive_ints(values: list[Any], most: int | None) -> bool:
    return all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= (most or v) for v in values
    )


def _weight_files(card: Mapping[str, Any]) -> list[str]:
    return [name for name in (WEIGHTS, HEADS, FINETUNED, ZEROSHOT) if name in card["files"]]


def _check_size(
    path: Path,
    model_cfg: Mapping[str, Any],
    headers: Mapping[str, Mapping[str, TensorInfo]],
    max_params: int,
) -> int:
    """The served model's parameter count, once the config's floor and every file are within
    ``max_params`` and the weights hold at least what the config needs."""
    floor, layers = config_floor(model_cfg, _hf_config(path, model_cfg))
    check_limit(f"{OPEN_CLIP_CONFIG} describes at least", floor, max_params)
    held = parameter_count(headers[WEIGHTS])
    served = held + parameter_count(headers[HEADS])
    check_limit(f"{WEIGHTS} and {HEADS} hold", served, max_params)
    for name in (FINETUNED, ZEROSHOT):  # each is the whole model again, at one WiSE-FT end
        if name in headers:
            check_limit(f"{name} holds", parameter_count(headers[name]), max_params)
    if floor > held:
        raise ArtifactError(
            f"{OPEN_CLIP_CONFIG} describes at least {floor:,} parameters, but the weights hold "
            f"{held:,} ({WEIGHTS}): not this model's config"
        )
    check_layers(layers, len(headers[WEIGHTS]))
    return served


def _hf_config(path: Path, model_cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    """A Hugging Face text tower's config.json, which must travel with the weights: without it,
    open_clip would fetch the tower's name from the network."""
    if not model_cfg["text_cfg"].get("hf_model_name"):
        return None
    if not (path / HF_CONFIG).is_file():
        raise ArtifactError(
            f"{OPEN_CLIP_CONFIG} names a Hugging Face text tower, but the artifact has no "
            f"{HF_CONFIG} for it"
        )
    return _read_json(path / HF_CONFIG)


def _check_heads(heads: Mapping[str, TensorInfo], classes: int, width: int) -> dict[str, Tensor]:
    """The heads' shapes, as meta tensors, once the file holds exactly those."""
    if set(heads) != {"default_head", "concept_head"}:
        raise ArtifactError(f"{HEADS} must hold exactly default_head and concept_head")
    wanted = (classes, width)
    for name, info in sorted(heads.items()):
        if info.shape != wanted:
            raise ArtifactError(
                f"{HEADS}: {name} is {info.shape}, expected {wanted} (classes x embedding width)"
            )
        if info.dtype not in FLOAT_DTYPES:
            raise ArtifactError(f"{HEADS}: {name} is stored as {info.dtype}")
    return {name: torch.empty(wanted, device="meta") for name in heads}


def _check_tokenizer(path: Path) -> None:
    """Serving encodes no prompt (the heads are stored), but loading builds the tokenizer."""
    try:
        open_clip.get_tokenizer(LOCAL_DIR + str(path))
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise ArtifactError(f"the artifact's tokenizer cannot be built: {exc}") from exc


def _refuse_pickles(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(root).as_posix()
        if _is_pickle(path):
            raise ArtifactError(
                f"{name} is a pickled file (pickle, torch.save, joblib or numpy): refused without "
                "being opened; an artifact holds only safetensors and JSON"
            )


def _is_pickle(path: Path) -> bool:
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        return True
    with open(path, "rb") as fh:
        head = fh.read(9)
    # A safetensors file is an 8-byte header length, then its JSON header: a length may start
    # with 0x80, so only a file without that JSON can be a pickle in disguise.
    if path.suffix == ".safetensors" and head[8:9] == b"{":
        return False
    # A pickle opens with PROTO (0x80, protocol 2-5); torch.save writes a zip holding one.
    return (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5) or head[:4] == b"PK\x03\x04"


def _check_listing(root: Path, card: Mapping[str, Any]) -> None:
    files = card.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ArtifactError(f"{CARD} has no 'files' map of name to sha256")
    for name in files:
        if name not in LISTABLE:
            raise ArtifactError(f"{CARD} lists {name!r}, which is not an artifact file")
    for required in (WEIGHTS, HEADS):
        if required not in files:
            raise ArtifactError(f"{CARD} does not list {required}")
    expected = {CARD, OPEN_CLIP_CONFIG, *files}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_dir():
            raise ArtifactError(f"unexpected folder {name}/: an artifact is one flat folder")
        if name not in expected:
            raise ArtifactError(f"unexpected file {name}: not listed in the card's 'files'")
    if not (root / OPEN_CLIP_CONFIG).is_file():
        raise ArtifactError(f"{OPEN_CLIP_CONFIG} is missing")


def _check_card_fields(card: Mapping[str, Any]) -> None:
    def strings(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    checks = {
        "classnames": strings(card.get("classnames")) and bool(card.get("classnames")),
        "templates": strings(card.get("templates")),
        "descriptions": isinstance(card.get("descriptions"), dict)
        and all(strings(v) for v in card["descriptions"].values()),
        "beta": isinstance(card.get("beta"), int | float) and 0.0 <= float(card["beta"]) <= 1.0,
        "learned_head": isinstance(card.get("learned_head"), bool),
        "backbone": isinstance(card.get("backbone"), dict),
    }
    for key, ok in checks.items():
        if not ok:
            raise ArtifactError(f"{CARD}: {key!r} is missing or malformed")
    classes = card["classnames"]
    if len(set(classes)) != len(classes):
        raise ArtifactError(f"{CARD}: 'classnames' repeats a class")


# --- re-merging at another alpha ---


def curve_alphas(card: Mapping[str, Any]) -> list[float]:
    """The alphas the card's WiSE-FT curve evaluated (empty without a curve)."""
    curve = (card.get("wise") or {}).get("curve") or []
    return [float(point["alpha"]) for point in curve]


def remerged_card(card: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """The card of the same run served at ``alpha``: the curve kept, the selection moved, the
    served metrics those the curve has at ``alpha`` (None off the curve)."""
    curve = {float(p["alpha"]): p["metrics"] for p in (card.get("wise") or {}).get("curve", [])}
    new = {k: v for k, v in card.items() if k != "files"}
    new["wise"] = {**(card.get("wise") or {}), "selected_alpha": alpha, "selection": "manual"}
    new["metrics"] = {**(card.get("metrics") or {}), "selected": curve.get(alpha)}
    return new


def merge_artifact(
    folder: str | Path,
    alpha: float,
    out: str | Path,
    card: Mapping[str, Any] | None = None,
    zeroshot_state: Mapping[str, Tensor] | None = None,
) -> Path:
    """Write the artifact at ``folder`` re-merged at ``alpha`` to ``out``.

    The ends come from the artifact (``zeroshot_state`` stands in for an artifact saved before
    the zero-shot end was kept); ``card`` adds to ``remerged_card`` (provenance). Heads are
    rebuilt from the merged text tower, as training does, so alpha 0 and 1 give the two ends.
    """
    artifact = load_artifact(folder, verify=True)
    files = artifact.card.get("files", {})
    if FINETUNED not in files:
        raise ArtifactError(f"{folder} has no fine-tuned end ({FINETUNED}): nothing to re-merge")
    if zeroshot_state is None:
        if ZEROSHOT not in files:
            raise ArtifactError(
                f"{folder} was saved without its zero-shot end ({ZEROSHOT}), so it cannot be "
                "re-merged exactly here"
            )
        zeroshot_state = load_weights(artifact.path / ZEROSHOT)
    finetuned = load_weights(artifact.path / FINETUNED)
    classifier = artifact.classifier
    try:
        classifier.load_state_dict(merge(zeroshot_state, finetuned, alpha), strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{folder}: its WiSE-FT ends do not fit the model: {exc}") from exc
    classifier.refresh_heads()
    new_card = {**remerged_card(artifact.card, alpha), **(card or {})}
    return save_artifact(out, classifier, new_card, finetuned, zeroshot_state=zeroshot_state)
