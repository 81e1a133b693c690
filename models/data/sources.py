"""Which loader reads a path: a folder is an image folder, a .csv or .jsonl file a manifest."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from models.data.folders import load_image_folder
from models.data.manifests import load_manifest
from models.data.splits import DatasetSplits
from models.errors import DataError


def open_dataset(
    path: str | Path, classnames: Sequence[str] | None = None, *, within: str | Path | None = None
) -> DatasetSplits:
    """A folder is an image folder; a .csv or .jsonl file is a manifest.

    With ``within``, every file the dataset reads must resolve (symlinks followed) inside that
    folder: a server that registers datasets passes the dataset's own root (``dataset_root``).
    """
    target = Path(path)
    if target.is_dir():
        return load_image_folder(target, classnames, within=within)
    if target.suffix.lower() in (".csv", ".jsonl"):
        return load_manifest(target, classnames, within=within)
    if not target.exists():
        raise DataError("no such file or folder", file=str(path))
    raise DataError("expected a folder or a .csv/.jsonl manifest", file=str(path))
