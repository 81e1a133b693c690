"""Artifacts: safetensors weights plus JSON. Nothing is pickled.

An artifact folder holds
- ``open_clip_config.json`` and ``open_clip_model.safetensors``: the served (WiSE-FT selected)
  weights, so the folder is also an open_clip ``local-dir:`` model and a valid base model;
- ``heads.safetensors``: the default and concept head rows, so loading encodes no prompts;
- ``finetuned.safetensors`` (trained runs): the alpha = 1 end, for later re-merging;
- ``artifact.json``: the model card (classes, prompts, beta, alpha curve, metrics, provenance).
Folders are written under a temporary name and renamed into place: a reader never sees half.
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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from models.backbone import OPEN_CLIP_CONFIG, build_from_open_clip_config, write_open_clip_config
from models.errors import ArtifactError
from models.heads import Classifier
from models.json_values import json_safe

FORMAT = "robust-clip-artifact/1"
CARD = "artifact.json"
WEIGHTS = "open_clip_model.safetensors"
HEADS = "heads.safetensors"
FINETUNED = "finetuned.safetensors"


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
) -> Path:
    """Write the artifact atomically; ``card`` adds metrics, curve, provenance to the core."""
    target = Path(folder)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} exists and overwrite is off")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_files(tmp, classifier, card, finetuned_state)
        swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_files(
    folder: Path,
    classifier: Classifier,
    card: Mapping[str, Any],
    finetuned_state: Mapping[str, Tensor] | None,
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
    files = [WEIGHTS, HEADS, *sorted(classifier.backbone.extra_files)]
    if finetuned_state is not None:
        save_file(_contiguous(finetuned_state), str(folder / FINETUNED))
        files.append(FINETUNED)
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
