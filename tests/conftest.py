"""Shared fixtures: a tiny random open_clip model, a small synthetic shift dataset, and the
settings overrides of the apps under test."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from models.backbone import create_backbone
from models.config import BackboneConfig
from models.data.synthetic import CLASSES, DESCRIPTIONS, write_shapes_dataset
from models.heads import Classifier
from service.settings import Settings

logging.getLogger("root").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic shapes dataset (train/val/test/ood_test), written once per session."""
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), per_class=8, size=32)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Settings a test's app runs with (``tests/service``, ``tests/ui``); a module overrides it."""
    return {}


@pytest.fixture
def app_settings(tmp_path: Path, shapes_root: Path, settings_overrides: dict[str, Any]) -> Settings:
    """The settings of the app under test: SQLite and folders under ``tmp_path``, the shapes
    dataset's root allowed, and the module's ``settings_overrides``."""
    from tests.service.support import make_settings

    return make_settings(tmp_path, shapes_root, **settings_overrides)


def make_classifier(seed: int = 0) -> Classifier:
    """A tiny random classifier over the shapes classes; the same weights for the same seed."""
    torch.manual_seed(seed)
    backbone = create_backbone(BackboneConfig(arch="test-tiny-vit"))
    return Classifier(backbone, CLASSES, ["a photo of a {c}.", "a {c}."], DESCRIPTIONS, beta=0.5)


@pytest.fixture
def classifier() -> Classifier:
    return make_classifier()
