"""Which backbone a task (a job, an evaluation) may start from, and the checks of the class
descriptions and prompt templates it brings: one place for both kinds of task."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from models.backbone import (
    LOCAL_DIR,
    OFFLINE_BACKBONE,
    OPEN_CLIP_CONFIG,
    WEIGHT_SUFFIXES,
    list_architectures,
    list_pretrained,
    looks_like_path,
)
from models.data import check_descriptions
from models.errors import ConfigError, DataError
from models.templates import resolve_templates
from service.db.tables import Dataset
from service.errors import InvalidRequest
from service.paths import under_roots
from service.registry import service as registry
from service.settings import Settings

REGISTRY_PREFIX = "models:/"
HUB_PREFIX = "hf-hub:"
# What huggingface_hub reads as true in HF_HUB_OFFLINE.
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class Base:
    model: str
    backbone: dict[str, Any]
    version_id: int | None
    pretrained: bool


def dataset_descriptions(
    value: Mapping[str, str | Sequence[str]], dataset: Dataset, param: str
) -> dict[str, list[str]]:
    """``value`` as {class: [texts]}, one for each of the dataset's classes: a 422 on ``param``
    naming the classes without a description and the descriptions of unknown classes."""
    texts = {k: [v] if isinstance(v, str) else list(v) for k, v in value.items()}
    try:
        check_descriptions(dataset.classes, texts)
    except DataError as exc:
        raise InvalidRequest(f"{exc} (dataset {dataset.id})", param) from exc
    return texts


def base_model(session: Session, settings: Settings, model: str, pretrained: str | None) -> Base:
    """The backbone ``model`` names: a registry version (``models:/name[/3|@alias]``) or what
    ``check_backbone`` allows."""
    if model.startswith(REGISTRY_PREFIX):
        if pretrained is not None:
            raise InvalidRequest("a registry model carries its own weights", "pretrained")
        version = registry.resolve(session, model, "model")
        ref = f"{REGISTRY_PREFIX}{version.name}/{version.version}"
        # The worker swaps the reference for a local copy of the artifact folder.
        return Base(ref, {"arch": ref, "pretrained": None}, version.id, True)
    backbone = check_backbone(settings, model, pretrained)
    arch = backbone["arch"]
    # Everything but a bare architecture carries trained weights (the auto lr keeps them).
    has_weights = backbone["pretrained"] is not None or arch not in list_architectures()
    return Base(model, backbone, None, has_weights)


def check_backbone(settings: Settings, model: str, pretrained: str | None) -> dict[str, Any]:
    """The one place that says which backbones a job may start from; returns the job's
    ``backbone`` config (a server folder as its real path, so a link swapped later cannot
    redirect it).

    Accepted, as by the library: an open_clip architecture with an optional pretrained tag (or a
    weights file under an allowed model root), the offline backbone, an open_clip model folder
    (``local-dir:/path`` or a plain path) under an allowed model root, and ``hf-hub:`` names
    where the server allows downloads. Whether the offline backbone is built is known only on
    the worker: a job there without it fails with the command that builds it.
    """
    if model.startswith(HUB_PREFIX):
        if not hub_models_allowed(settings):
            raise InvalidRequest(
                f"{model!r}: models from the Hugging Face Hub are not allowed on this server "
                "(RCS_ALLOW_HUB_MODELS is off, or HF_HUB_OFFLINE is set)",
                "model",
            )
        if pretrained is not None:
            raise InvalidRequest("an hf-hub: model carries its own weights", "pretrained")
        return {"arch": model, "pretrained": None}
    if model == OFFLINE_BACKBONE or model.startswith(LOCAL_DIR) or looks_like_path(model):
        if pretrained is not None:
            raise InvalidRequest(f"{model!r} carries its own weights", "pretrained")
        if model == OFFLINE_BACKBONE:
            return {"arch": model, "pretrained": None}
        return {"arch": LOCAL_DIR + str(model_folder(settings, model)), "pretrained": None}
    if model not in list_architectures():
        raise InvalidRequest(
            f"unknown model {model!r}: expected an open_clip architecture, "
            f"{OFFLINE_BACKBONE!r}, a model folder ('{LOCAL_DIR}/path' under "
            f"RCS_ALLOWED_MODEL_ROOTS) or '{REGISTRY_PREFIX}name[/version|@alias]'",
            "model",
        )
    if pretrained is not None and looks_like_path(pretrained):
        weights = under_roots(
            settings.allowed_model_roots,
            pretrained,
            "pretrained",
            "model",
            "RCS_ALLOWED_MODEL_ROOTS",
        )
        if not weights.is_file():
            raise InvalidRequest(f"{pretrained} is not a weights file", "pretrained")
        return {"arch": model, "pretrained": str(weights)}
    if pretrained is not None and pretrained not in list_pretrained(model):
        tags = list_pretrained(model)
        raise InvalidRequest(f"{model} has no pretrained tag {pretrained!r} ({tags})", "pretrained")
    return {"arch": model, "pretrained": pretrained}


def model_folder(settings: Settings, model: str) -> Path:
    """An open_clip model folder under an allowed model root, with its config and weights."""
    folder = under_roots(
        settings.allowed_model_roots,
        model.removeprefix(LOCAL_DIR),
        "model",
        "model",
        "RCS_ALLOWED_MODEL_ROOTS",
    )
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise InvalidRequest(
            f"{model}: not an open_clip model folder (no {OPEN_CLIP_CONFIG})", "model"
        )
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir() if p.is_file()):
        raise InvalidRequest(
            f"{model}: no weights file ({', '.join(WEIGHT_SUFFIXES)}) in the folder", "model"
        )
    return folder


def hub_models_allowed(settings: Settings) -> bool:
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    return settings.allow_hub_models and not offline


def check_templates(templates: str | Sequence[str]) -> None:
    # The core resolves a template set's name only when the worker builds the heads.
    try:
        resolve_templates(templates)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), "head.templates") from exc
