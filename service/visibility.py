"""What a key may see of the server itself: its folders are for keys that manage the service.

A ``predict`` key classifies and reads; where an artifact lives on disk, which server folder a
dataset was read from or which local checkpoint a backbone started from maps the server for
whoever holds a leaked key and helps no client. ``train`` and ``admin`` keys, which register
datasets by server path, still see them.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

from service.auth.service import Principal
from service.registry.schemas import ModelVersionObject

SEES_SERVER_PATHS = frozenset({"train", "admin"})
# A POSIX or Windows absolute path, or a file: URL.
_SERVER_PATH = re.compile(r"^(/|[A-Za-z]:[\\/]|file:)")
T = TypeVar("T")


def sees_server_paths(principal: Principal) -> bool:
    return bool(principal.scopes & SEES_SERVER_PATHS)


def without_paths(value: T) -> T:
    """``value`` (JSON-like) with every absolute path string cut to its last part."""
    return _strip(value)  # type: ignore[no-any-return]


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _strip(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    if isinstance(value, str) and _SERVER_PATH.match(value):
        return "…/" + re.split(r"[\\/]", value.rstrip("/\\"))[-1]
    return value


# An absolute path inside a sentence (a failed registration's message quotes what it copied).
_PATH_IN_TEXT = re.compile(r"(?<![\w.:/])(?:file:)?/[^\s'\"]+")


def paths_hidden_in(text: str) -> str:
    return _PATH_IN_TEXT.sub(lambda match: _strip(match.group()), text)


# The card fields that record where things were on the server.
_CARD_FIELDS = ("dataset", "backbone", "hyperparameters")


def version_for(principal: Principal, version: ModelVersionObject) -> ModelVersionObject:
    """The version as ``principal`` may see it: its artifact named by its registry URI
    (``models:/name/3``, as MLflow writes it) rather than its folder, the card without paths."""
    if sees_server_paths(principal):
        return version
    update: dict[str, Any] = {f: without_paths(getattr(version, f)) for f in _CARD_FIELDS}
    update["source"] = f"models:/{version.name}/{version.version}"
    if version.status_message:
        update["status_message"] = paths_hidden_in(version.status_message)
    return version.model_copy(update=update)
