"""Loaded models, one copy per process, bounded by memory (least recently used out).

An artifact carries its class heads precomputed (``heads.safetensors``), so loading encodes no
prompts and a request runs the image tower only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.artifacts import load_artifact
from models.heads import Classifier

Key = tuple[str, int]


@dataclass
class LoadedModel:
    name: str
    version: int
    classifier: Classifier
    transform: Callable[[Any], torch.Tensor]
    nbytes: int

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def classnames(self) -> list[str]:
        return list(self.classifier.classnames)


def model_bytes(module: torch.nn.Module) -> int:
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def load(name: str, version: int, folder: Path, device: str) -> LoadedModel:
    artifact = load_artifact(folder, device=device)
    classifier = artifact.classifier.eval()
    transform = classifier.backbone.transform(train=False)
    return LoadedModel(name, version, classifier, transform, model_bytes(classifier))


def warm_up(model: LoadedModel) -> None:
    """One forward pass: the first one pays for lazy initialisation, not a user's request."""
    height, width = model.classifier.backbone.image_size
    with torch.inference_mode():
        model.classifier(torch.zeros(1, 3, height, width, device=model.classifier.device))


class ModelCache:
    def __init__(self, max_bytes: int, device: str = "cpu") -> None:
        self.max_bytes = max_bytes
        self.device = device
        self._models: OrderedDict[Key, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Key, threading.Lock] = {}

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def get(self, name: str, version: int, folder: Callable[[], Path]) -> LoadedModel:
        key = (name, version)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loading = self._loading.setdefault(key, threading.Lock())
        # One loader per model; other requests for it wait here instead of loading a copy.
        with loading:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = load(name, version, folder(), self.device)
            warm_up(model)
            self._insert(key, model)
            return model

    def _insert(self, key: Key, model: LoadedModel) -> None:
        with self._lock:
            self._models[key] = model
            self._loading.pop(key, None)
            # Keep at least the model just loaded, even when it alone exceeds the budget.
            while self.nbytes > self.max_bytes and len(self._models) > 1:
                self._models.popitem(last=False)

    def evict(self, name: str, version: int) -> None:
        with self._lock:
            self._models.pop((name, version), None)

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._models)
