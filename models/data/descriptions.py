"""Class descriptions: ``{classname: "text" | ["text", ...]}`` from .json, .yaml or .yml."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from models.data.listing import existing_file
from models.data.splits import quoted
from models.errors import DataError


def load_descriptions(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read ``{classname: "text" | ["text", ...]}`` from .json, .yaml or .yml."""
    file = existing_file(path)
    data = _parse_descriptions(file)
    if not isinstance(data, dict) or not data:
        message = "expected a non-empty mapping {classname: text or [texts]}"
        raise DataError(message, file=str(file))
    result: dict[str, tuple[str, ...]] = {}
    for key, value in data.items():
        name = _class_key(key, file)
        if name in result:
            raise DataError(f"class '{name}' appears twice", file=str(file))
        result[name] = _description_texts(name, value, file)
    return result


def _parse_descriptions(file: Path) -> Any:
    suffix = file.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise DataError("descriptions must be a .json, .yaml or .yml file", file=str(file))
    try:
        text = file.read_text(encoding="utf-8-sig")
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"cannot parse: {exc}", file=str(file)) from exc


def _class_key(key: Any, file: Path) -> str:
    # YAML reads `1:` as an int (fine, a numeric class name) but `yes:` as a bool (never meant).
    if isinstance(key, bool) or not isinstance(key, str | int) or not str(key).strip():
        raise DataError(f"class name {key!r} must be a non-empty string", file=str(file))
    return str(key).strip()


def _description_texts(name: str, value: Any, file: Path) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise DataError(f"class '{name}': expected a text or a list of texts", file=str(file))
    if not all(isinstance(item, str) and item.strip() for item in items):
        raise DataError(f"class '{name}': empty or non-text description", file=str(file))
    return tuple(item.strip() for item in items)


def check_descriptions(
    classnames: Sequence[str],
    descriptions: Mapping[str, Sequence[str]],
    file: str | None = None,
) -> None:
    """Every class needs a non-empty description, and every description a known class."""
    known = set(classnames)
    missing = [name for name in classnames if not _has_text(descriptions.get(name))]
    unknown = sorted(name for name in descriptions if name not in known)
    problems = []
    if missing:
        problems.append(f"no description for class(es) {quoted(missing)}")
    if unknown:
        problems.append(f"descriptions for unknown class(es) {quoted(unknown)}")
    if problems:
        raise DataError("; ".join(problems), file=file)


def _has_text(texts: Sequence[str] | None) -> bool:
    if texts is None:
        return False
    # A bare string is a Sequence[str] too; read it as one description, not as characters.
    items = [texts] if isinstance(texts, str) else texts
    return any(isinstance(item, str) and item.strip() for item in items)
