"""What every loader shares: finding files, confining them to a folder, freezing the result."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from models.data.fingerprints import fingerprint_samples
from models.data.splits import DatasetSplits, Sample, quoted
from models.errors import DataError

# The files a dataset lists as images. TIFF is listed though ``images.ACCEPTED_FORMATS`` refuses
# it: a dataset of TIFFs is then refused naming a file and the accepted formats, where skipping
# them would leave its classes empty without saying why.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def dataset_root(path: str | Path) -> Path:
    """The folder a dataset's files must stay in: the folder itself, or a manifest's folder."""
    real = Path(os.path.realpath(path))
    return real if real.is_dir() else real.parent


class Confinement:
    """Refuses any path that resolves outside ``within`` (None: no confinement, as the CLI)."""

    # One message whatever lies outside: whether that path exists must not leak.
    MESSAGE = "the path resolves outside the dataset's folder"

    def __init__(self, within: str | Path | None) -> None:
        self.base = None if within is None else os.path.realpath(within)

    def check(self, path: str | Path, file: str, row: int | None = None) -> None:
        if self.base is None:
            return
        real = os.path.realpath(path)
        if real != self.base and not real.startswith(self.base.rstrip(os.sep) + os.sep):
            raise DataError(self.MESSAGE, file=file, row=row)


def make_splits(
    classnames: Sequence[str], splits: Mapping[str, Sequence[Sample]], source: Path, root: Path
) -> DatasetSplits:
    frozen = {name: tuple(splits[name]) for name in sorted(splits)}
    fingerprint = fingerprint_samples(classnames, frozen, root)
    return DatasetSplits(tuple(classnames), frozen, str(source), fingerprint)


def existing_dir(path: str | Path) -> Path:
    folder = Path(os.path.abspath(path))
    if not folder.is_dir():
        raise DataError("folder not found", file=str(folder))
    return folder


def existing_file(path: str | Path) -> Path:
    file = Path(os.path.abspath(path))
    if not file.is_file():
        raise DataError("file not found", file=str(file))
    return file


def checked_classnames(classnames: Sequence[str], source: Path) -> tuple[str, ...]:
    names = tuple(classnames)
    if not names or any(not str(name).strip() for name in names):
        raise DataError("class names must be non-empty", file=str(source))
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DataError(f"duplicate class names {quoted(duplicates)}", file=str(source))
    return names


def subdirs(folder: Path) -> list[str]:
    # Hidden folders (.git, .ipynb_checkpoints) are never classes or splits.
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def list_images(folder: Path) -> list[str]:
    found: list[str] = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(os.path.join(top, name) for name in files if is_image_name(name))
    return sorted(found)


def is_image_name(name: str) -> bool:
    # Hidden files are skipped: macOS "._x.jpg" resource forks have image names but no image.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
