"""ImageNet and its distribution shifts from a local copy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from models.data.folders import scan_split
from models.data.listing import checked_classnames, existing_dir, make_splits, subdirs
from models.data.splits import DatasetSplits, Sample, Scoring
from models.errors import DataError

IMAGENET_VARIANTS = ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet")
# ImageNet variants that cover a subset of the classes: scored on that subset (logits projected).
IMAGENET_SUBSET_VARIANTS = ("imagenet-r", "imagenet-a")


def load_imagenet_variants(root: str | Path) -> DatasetSplits:
    """Read ``root/train/<wnid>/*``, ``root/val/<wnid>/*`` and any OOD sets beside them.

    The OOD sets (``imagenet-v2``, ``imagenet-sketch``, ``imagenet-r``, ``imagenet-a``,
    ``objectnet``) become splits ``ood_<name>``. Their folders are wnids, or class indices as
    ImageNetV2 ships them; ImageNet-R/A cover 200 classes and are scored on those (their
    ``scoring``: logits projected onto the classes of their folders before the softmax).
    Class names come from ``root/classnames.txt`` (one per line, wnid order), else the wnids.
    """
    base = existing_dir(root)
    if not (base / "train").is_dir():
        raise DataError("train/ folder not found", file=str(base))
    wnids = subdirs(base / "train")
    if not wnids:
        raise DataError("no class folders in train/", file=str(base / "train"))
    names = _imagenet_classnames(base / "classnames.txt", wnids)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    folders = {"train": "train", "val": "val"} | {f"ood_{v}": v for v in IMAGENET_VARIANTS}
    splits = {
        split: _imagenet_split(base / folder, index)
        for split, folder in folders.items()
        if (base / folder).is_dir()
    }
    scoring = {
        f"ood_{v}": Scoring(classes=_imagenet_subset(base / v, index))
        for v in IMAGENET_SUBSET_VARIANTS
        if (base / v).is_dir()
    }
    return replace(make_splits(names, splits, base, base), scoring=scoring)


def _imagenet_subset(folder: Path, index: Mapping[str, int]) -> tuple[int, ...]:
    """The classes a variant covers: its class folders (200 for ImageNet-R and -A)."""
    return tuple(sorted(_imagenet_label(folder / name, index) for name in subdirs(folder)))


def _imagenet_split(folder: Path, index: Mapping[str, int]) -> list[Sample]:
    by_class = scan_split(folder)
    return [
        Sample(path, _imagenet_label(folder / name, index))
        for name in sorted(by_class)
        for path in by_class[name]
    ]


def _imagenet_label(folder: Path, index: Mapping[str, int]) -> int:
    name = folder.name
    if name in index:
        return index[name]
    if name.isdigit() and int(name) < len(index):
        return int(name)
    raise DataError("folder is neither a training class wnid nor a class index", file=str(folder))


def _imagenet_classnames(file: Path, wnids: Sequence[str]) -> tuple[str, ...]:
    if not file.is_file():
        return tuple(wnids)
    lines = file.read_text(encoding="utf-8-sig").rstrip().splitlines()
    names = [line.strip() for line in lines]
    if len(names) != len(wnids):
        message = f"{len(names)} class names for {len(wnids)} class folders in train/"
        raise DataError(message, file=str(file))
    return checked_classnames(names, file)
