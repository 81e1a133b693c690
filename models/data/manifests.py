"""Manifests: .csv with a header path,label,split[,group] or .jsonl objects with those keys."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.data.listing import Confinement, checked_classnames, existing_file, make_splits
from models.data.splits import DatasetSplits, Sample
from models.data.tables import field, group, read_csv, read_jsonl
from models.errors import DataError

MANIFEST_COLUMNS = ("path", "label", "split")


@dataclass(frozen=True)
class _Entry:
    row: int
    path: str
    label: str
    split: str
    group: str | None


def load_manifest(
    path: str | Path, classnames: Sequence[str] | None = None, *, within: str | Path | None = None
) -> DatasetSplits:
    """Read a manifest; relative image paths resolve against the manifest's folder.

    Labels are class names. Without ``classnames`` the classes are the sorted unique labels; with
    it, their order defines the labels and any other label is an error. Rows are 1-based data
    rows: for CSV the first line after the header is row 1, for JSONL the row is the line number.
    With ``within``, a row whose image resolves outside it is an error (before any existence
    check, so the error never tells whether that outside file exists).
    """
    file = existing_file(path)
    confinement = Confinement(within)
    confinement.check(file, str(file))
    entries = [_manifest_entry(record, row, file) for row, record in _read_manifest(file)]
    if not entries:
        raise DataError("no data rows", file=str(file))
    if classnames is None:
        names = tuple(sorted({entry.label for entry in entries}))
    else:
        names = checked_classnames(classnames, file)
    index = {name: i for i, name in enumerate(names)}
    splits: dict[str, list[Sample]] = {}
    for entry in entries:
        sample = _manifest_sample(entry, index, file, confinement)
        splits.setdefault(entry.split, []).append(sample)
    return make_splits(names, splits, file, file.parent)


def _read_manifest(file: Path) -> list[tuple[int, dict[str, Any]]]:
    suffix = file.suffix.lower()
    if suffix == ".csv":
        return read_csv(file, MANIFEST_COLUMNS)
    if suffix == ".jsonl":
        return read_jsonl(file)
    raise DataError("a manifest must be a .csv or .jsonl file", file=str(file))


def _manifest_entry(record: Mapping[str, Any], row: int, file: Path) -> _Entry:
    path, label, split = (field(record, column, row, file) for column in MANIFEST_COLUMNS)
    return _Entry(row, path, label, split, group(record.get("group"), row, file))


def _manifest_sample(
    entry: _Entry, index: Mapping[str, int], file: Path, confinement: Confinement
) -> Sample:
    if entry.label not in index:
        raise DataError(f"unknown label '{entry.label}'", file=str(file), row=entry.row)
    # join leaves absolute paths as they are; normpath keeps symlinks, unlike resolve().
    full = os.path.normpath(os.path.join(file.parent, entry.path))
    confinement.check(full, str(file), entry.row)
    if not os.path.isfile(full):
        raise DataError(f"image file not found: {entry.path}", file=str(file), row=entry.row)
    return Sample(full, index[entry.label], entry.group, entry.row)
