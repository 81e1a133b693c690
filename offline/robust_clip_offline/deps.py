"""The ``offline`` extra: packages the asset builders need and the core does not.

One place says which extra to install when one is missing, so every path that needs them (the
CLI's ``build-offline-backbone``, the benchmark's image sources) gives the same advice.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from models.errors import ModelsError

INSTALL_EXTRA = "pip install 'robust-clip[offline]'"
# animal-mnist's metadata pulls in TensorFlow, which the extra must not; it installs alone.
ANIMAL_MNIST_PIP = "pip install --no-deps animal-mnist==0.4"


class MissingDependency(ModelsError):
    """A package of the ``offline`` extra is not installed; the message says how to get it."""


def require(module: str, install: str = INSTALL_EXTRA) -> Any:
    """Import ``module``, or raise ``MissingDependency`` naming the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(f"{module} is not installed ({exc}); run `{install}`") from exc


def package_dir(module: str, install: str) -> Path:
    """Where an installed package lives, found without importing it."""
    # find_spec, not import: animal_mnist's __init__ would import TensorFlow.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"package {module!r} is not installed; run `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))
