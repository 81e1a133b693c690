"""Image folders: ``root/<split>/<class>/<image>``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from models.data.listing import (
    Confinement,
    checked_classnames,
    existing_dir,
    is_image_name,
    list_images,
    make_splits,
    subdirs,
)
from models.data.splits import DatasetSplits, Sample
from models.errors import DataError


def load_image_folder(
    root: str | Path, classnames: Sequence[str] | None = None, *, within: str | Path | None = None
) -> DatasetSplits:
    """Read ``root/<split>/<class>/*``; class names are the folder names, sorted.

    A class folder without images is still listed, so ``validate_splits`` can report it. With
    ``classnames`` given, their order defines the labels and any other folder is an error. With
    ``within``, a folder or image that resolves outside it (a symlink out) is an error.
    """
    base = existing_dir(root)
    confinement = Confinement(within)
    confinement.check(base, str(base))
    split_names = subdirs(base)
    if not split_names:
        raise DataError("no split folders; expected <root>/<split>/<class>/<image>", file=str(base))
    listing = {split: scan_split(base / split, confinement) for split in split_names}
    names = _folder_classnames(listing, classnames, base)
    index = {name: i for i, name in enumerate(names)}
    splits = {split: _folder_samples(by_class, index) for split, by_class in listing.items()}
    return make_splits(names, splits, base, base)


def _folder_samples(by_class: Mapping[str, list[str]], index: Mapping[str, int]) -> list[Sample]:
    return [Sample(path, index[name]) for name in sorted(by_class) for path in by_class[name]]


def scan_split(split_dir: Path, confinement: Confinement | None = None) -> dict[str, list[str]]:
    """The images of one split folder, by class folder name."""
    confined = confinement or Confinement(None)
    base = split_dir.parent
    # Folders are checked before they are listed: a symlink out must not be walked at all, and
    # errors name the path relative to the dataset, never where a link points.
    confined.check(split_dir, split_dir.name)
    loose = sorted(name for name in os.listdir(split_dir) if is_image_name(name))
    if loose:
        raise DataError(
            f"image '{loose[0]}' is not in a class folder; expected <split>/<class>/<image>",
            file=str(split_dir),
        )
    listing = {}
    for name in subdirs(split_dir):
        confined.check(split_dir / name, f"{split_dir.name}/{name}")
        listing[name] = list_images(split_dir / name)
        for path in listing[name]:
            confined.check(path, Path(os.path.relpath(path, base)).as_posix())
    return listing


def _folder_classnames(
    listing: Mapping[str, Mapping[str, list[str]]], classnames: Sequence[str] | None, base: Path
) -> tuple[str, ...]:
    found = sorted({name for by_class in listing.values() for name in by_class})
    if classnames is None:
        return tuple(found)
    names = checked_classnames(classnames, base)
    for split, by_class in listing.items():
        unknown = [name for name in by_class if name not in names]
        if unknown:
            raise DataError(f"unknown label '{unknown[0]}'", file=str(base / split / unknown[0]))
    return names
