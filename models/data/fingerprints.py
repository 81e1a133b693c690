"""A dataset's fingerprint: what a run records so it can say exactly which data it saw."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models.data.splits import Sample


def fingerprint_samples(
    classnames: Sequence[str],
    splits: Mapping[str, Sequence[Sample]],
    root: str | Path | None = None,
) -> str:
    """sha256 of the class names and, per split, the sorted (relative path, label, group, size).

    Paths are relative to ``root`` (default: the deepest folder holding every image) with ``/``
    separators, so moving or copying the whole dataset keeps the fingerprint, while relabelling,
    adding, removing or rewriting (a different size) any file changes it.
    """
    base = os.path.abspath(root) if root is not None else _common_folder(splits)
    digest = hashlib.sha256()
    _update(digest, ["classnames", list(classnames)])
    for name in sorted(splits):
        records = sorted(_record(sample, classnames, base) for sample in splits[name])
        _update(digest, ["split", name, len(records)])
        for record in records:
            _update(digest, record)
    return digest.hexdigest()


def _record(sample: Sample, classnames: Sequence[str], base: str) -> tuple[str, str, str, int]:
    relative = Path(os.path.relpath(sample.path, base)).as_posix()
    # None does not sort against strings; the "=" prefix keeps every real group apart from "".
    group = "" if sample.group is None else f"={sample.group}"
    return relative, classnames[sample.label], group, _size(sample.path)


def _update(digest: Any, item: Any) -> None:
    # One JSON line per item: the escaping makes the framing unambiguous.
    digest.update(json.dumps(item, ensure_ascii=False).encode() + b"\n")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _common_folder(splits: Mapping[str, Sequence[Sample]]) -> str:
    folders = [os.path.dirname(s.path) for samples in splits.values() for s in samples]
    return os.path.commonpath(folders) if folders else ""
