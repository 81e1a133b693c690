"""Typed errors of the ML core.

Callers (the CLI, the worker, the HTTP service) map these to their own surfaces once;
nothing in `models` raises a bare ``Exception`` for a condition a user can cause.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Base class of every error a user can cause through `models`."""


class ConfigError(ModelsError, ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    ``key`` is the dotted path of the offending field (``train.lr``), when known.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class DataError(ModelsError, ValueError):
    """A dataset is unusable. Names the file and, for manifests, the 1-based row."""

    def __init__(self, message: str, file: str | None = None, row: int | None = None) -> None:
        self.file = file
        self.row = row
        where = ""
        if file is not None:
            where = f"{file}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(f"{where}{message}")


class BackboneError(ModelsError, ValueError):
    """A backbone cannot be created: unknown architecture, missing weights file."""


class ArtifactError(ModelsError, ValueError):
    """An artifact folder is missing files, is corrupt, or does not match its JSON."""


class ExportError(ModelsError, RuntimeError):
    """A model cannot be exported (to ONNX): an operation the exporter does not support, or an
    export whose answers differ from the model's beyond the stated tolerance."""


class TrainingError(ModelsError, RuntimeError):
    """Training cannot go on: a non-finite loss, an empty loader."""


class Cancelled(ModelsError):
    """Training stopped because the progress callback asked it to."""


class WeakDescriptionsError(ConfigError):
    """The pre-training guard: the class descriptions leave the frozen concept head near
    chance, and the objective leans on it (models.diagnostics.near_chance)."""
