"""Datasets as labelled file listings: image folders, manifests, and local WILDS/ImageNet copies.

Every loader returns a ``DatasetSplits``: class names, named splits of ``Sample`` (absolute image
path, label index, optional group for worst-group accuracy) and a fingerprint of the listing, so
a run can record exactly which data it saw. Images are only opened by ``validate_splits`` (once,
up front, so a bad file fails the job before training) and by ``ImageDataset`` (at training time).
Every bad-data condition raises ``DataError`` naming the file and, for tables, the 1-based row.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from PIL import Image
from torch.utils.data import Dataset

from models.errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
MANIFEST_COLUMNS = ("path", "label", "split")

# WILDS split name -> ours: the in-distribution splits become val/test, the shifted ones ood_*.
WILDS_SPLITS = {
    "train": "train",
    "id_val": "val",
    "id_test": "test",
    "val": "ood_val",
    "test": "ood_test",
}
IMAGENET_VARIANTS = ("imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "objectnet")

# The 62 FMoW categories in WILDS' label order (label = position in this tuple).
FMOW_CATEGORIES = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse", "military_facility",
    "multi-unit_residential", "nuclear_powerplant", "office_building", "oil_or_gas_facility",
    "park", "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison",
    "race_track", "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard",
    "shopping_mall", "single-unit_residential", "smokestack", "solar_farm", "space_facility",
    "stadium", "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower",
    "tunnel_opening", "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)  # fmt: skip

# WILDS' official FMoW scheme: images from 2016 on are OOD test, 2013-2015 OOD val.
FMOW_OOD_TEST_YEAR = 2016
FMOW_OOD_VAL_YEAR = 2013
# WILDS' FMoW evaluation leaves this region out of the worst-region accuracy.
FMOW_IGNORED_REGION = "Other"
# ImageNet variants that cover a subset of the classes: scored on that subset (logits projected).
IMAGENET_SUBSET_VARIANTS = ("imagenet-r", "imagenet-a")

# Image checks decode at most this size: JPEG can then skip most of the IDCT work while still
# reading every byte of the file, so truncation is still caught.
_CHECK_SIZE = 64
_CHECK_CHUNK = 1024


@dataclass(frozen=True)
class Sample:
    """One labelled image."""

    path: str
    label: int
    group: str | None = None
    # 1-based data row of the manifest or metadata table it came from, for error messages.
    row: int | None = None


@dataclass(frozen=True)
class Scoring:
    """How a benchmark scores one split, where it prescribes more than the defaults.

    ``classes``: score on this subset of class indices only, the logits projected onto it before
    the softmax (ImageNet-R and ImageNet-A: 200 of the 1000 classes, as WiSE-FT, FLYP and DRM
    evaluate them). ``macro_f1_over``: ``labels`` averages F1 over the classes present in the
    labels only (WILDS' iWildCam). ``ignore_groups``: groups left out of worst-group accuracy
    (WILDS' FMoW ignores the region "Other").
    """

    classes: tuple[int, ...] | None = None
    macro_f1_over: Literal["present", "labels"] = "present"
    ignore_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetSplits:
    """Class names and named splits of samples, with where they came from.

    ``scoring`` names the splits a benchmark scores its own way (see ``Scoring``); the others
    get the defaults.
    """

    classnames: tuple[str, ...]
    splits: dict[str, tuple[Sample, ...]]
    source: str
    fingerprint: str
    scoring: dict[str, Scoring] = field(default_factory=dict)

    def split(self, name: str) -> tuple[Sample, ...]:
        if name not in self.splits:
            available = _quoted(self.splits) or "none"
            raise DataError(f"no split '{name}' (available: {available})", file=self.source)
        return self.splits[name]

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: _class_counts(s, self.classnames) for name, s in self.splits.items()}


def _class_counts(samples: Sequence[Sample], classnames: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(classnames, 0)
    for sample in samples:
        counts[classnames[sample.label]] += 1
    return counts


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)


# ---------------------------------------------------------------------------------------------
# Opening any dataset


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


def dataset_root(path: str | Path) -> Path:
    """The folder a dataset's files must stay in: the folder itself, or a manifest's folder."""
    real = Path(os.path.realpath(path))
    return real if real.is_dir() else real.parent


class _Confinement:
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


def _make(
    classnames: Sequence[str], splits: Mapping[str, Sequence[Sample]], source: Path, root: Path
) -> DatasetSplits:
    frozen = {name: tuple(splits[name]) for name in sorted(splits)}
    fingerprint = fingerprint_samples(classnames, frozen, root)
    return DatasetSplits(tuple(classnames), frozen, str(source), fingerprint)


def _existing_dir(path: str | Path) -> Path:
    folder = Path(os.path.abspath(path))
    if not folder.is_dir():
        raise DataError("folder not found", file=str(folder))
    return folder


def _existing_file(path: str | Path) -> Path:
    file = Path(os.path.abspath(path))
    if not file.is_file():
        raise DataError("file not found", file=str(file))
    return file


def _checked_classnames(classnames: Sequence[str], source: Path) -> tuple[str, ...]:
    names = tuple(classnames)
    if not names or any(not str(name).strip() for name in names):
        raise DataError("class names must be non-empty", file=str(source))
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise DataError(f"duplicate class names {_quoted(duplicates)}", file=str(source))
    return names


# ---------------------------------------------------------------------------------------------
# Image folders: root/<split>/<class>/<image>


def load_image_folder(
    root: str | Path, classnames: Sequence[str] | None = None, *, within: str | Path | None = None
) -> DatasetSplits:
    """Read ``root/<split>/<class>/*``; class names are the folder names, sorted.

    A class folder without images is still listed, so ``validate_splits`` can report it. With
    ``classnames`` given, their order defines the labels and any other folder is an error. With
    ``within``, a folder or image that resolves outside it (a symlink out) is an error.
    """
    base = _existing_dir(root)
    confinement = _Confinement(within)
    confinement.check(base, str(base))
    split_names = _subdirs(base)
    if not split_names:
        raise DataError("no split folders; expected <root>/<split>/<class>/<image>", file=str(base))
    listing = {split: _scan_split(base / split, confinement) for split in split_names}
    names = _folder_classnames(listing, classnames, base)
    index = {name: i for i, name in enumerate(names)}
    splits = {split: _folder_samples(by_class, index) for split, by_class in listing.items()}
    return _make(names, splits, base, base)


def _folder_samples(by_class: Mapping[str, list[str]], index: Mapping[str, int]) -> list[Sample]:
    return [Sample(path, index[name]) for name in sorted(by_class) for path in by_class[name]]


def _scan_split(split_dir: Path, confinement: _Confinement | None = None) -> dict[str, list[str]]:
    confined = confinement or _Confinement(None)
    base = split_dir.parent
    # Folders are checked before they are listed: a symlink out must not be walked at all, and
    # errors name the path relative to the dataset, never where a link points.
    confined.check(split_dir, split_dir.name)
    loose = sorted(name for name in os.listdir(split_dir) if _is_image_name(name))
    if loose:
        raise DataError(
            f"image '{loose[0]}' is not in a class folder; expected <split>/<class>/<image>",
            file=str(split_dir),
        )
    listing = {}
    for name in _subdirs(split_dir):
        confined.check(split_dir / name, f"{split_dir.name}/{name}")
        listing[name] = _list_images(split_dir / name)
        for path in listing[name]:
            confined.check(path, Path(os.path.relpath(path, base)).as_posix())
    return listing


def _folder_classnames(
    listing: Mapping[str, Mapping[str, list[str]]], classnames: Sequence[str] | None, base: Path
) -> tuple[str, ...]:
    found = sorted({name for by_class in listing.values() for name in by_class})
    if classnames is None:
        return tuple(found)
    names = _checked_classnames(classnames, base)
    for split, by_class in listing.items():
        unknown = [name for name in by_class if name not in names]
        if unknown:
            raise DataError(f"unknown label '{unknown[0]}'", file=str(base / split / unknown[0]))
    return names


def _subdirs(folder: Path) -> list[str]:
    # Hidden folders (.git, .ipynb_checkpoints) are never classes or splits.
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _list_images(folder: Path) -> list[str]:
    found: list[str] = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        found.extend(os.path.join(top, name) for name in files if _is_image_name(name))
    return sorted(found)


def _is_image_name(name: str) -> bool:
    # Hidden files are skipped: macOS "._x.jpg" resource forks have image names but no image.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------
# Manifests: .csv with a header path,label,split[,group] or .jsonl objects with those keys


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
    file = _existing_file(path)
    confinement = _Confinement(within)
    confinement.check(file, str(file))
    entries = [_manifest_entry(record, row, file) for row, record in _read_manifest(file)]
    if not entries:
        raise DataError("no data rows", file=str(file))
    if classnames is None:
        names = tuple(sorted({entry.label for entry in entries}))
    else:
        names = _checked_classnames(classnames, file)
    index = {name: i for i, name in enumerate(names)}
    splits: dict[str, list[Sample]] = {}
    for entry in entries:
        sample = _manifest_sample(entry, index, file, confinement)
        splits.setdefault(entry.split, []).append(sample)
    return _make(names, splits, file, file.parent)


def _read_manifest(file: Path) -> list[tuple[int, dict[str, Any]]]:
    suffix = file.suffix.lower()
    if suffix == ".csv":
        return _read_csv(file, MANIFEST_COLUMNS)
    if suffix == ".jsonl":
        return _read_jsonl(file)
    raise DataError("a manifest must be a .csv or .jsonl file", file=str(file))


def _manifest_entry(record: Mapping[str, Any], row: int, file: Path) -> _Entry:
    path, label, split = (_field(record, column, row, file) for column in MANIFEST_COLUMNS)
    return _Entry(row, path, label, split, _group(record.get("group"), row, file))


def _manifest_sample(
    entry: _Entry, index: Mapping[str, int], file: Path, confinement: _Confinement
) -> Sample:
    if entry.label not in index:
        raise DataError(f"unknown label '{entry.label}'", file=str(file), row=entry.row)
    # join leaves absolute paths as they are; normpath keeps symlinks, unlike resolve().
    full = os.path.normpath(os.path.join(file.parent, entry.path))
    confinement.check(full, str(file), entry.row)
    if not os.path.isfile(full):
        raise DataError(f"image file not found: {entry.path}", file=str(file), row=entry.row)
    return Sample(full, index[entry.label], entry.group, entry.row)


def _field(record: Mapping[str, Any], column: str, row: int, file: Path) -> str:
    if column not in record:
        raise DataError(f"missing column '{column}'", file=str(file), row=row)
    text = _text(record[column], column, row, file)
    if not text:
        raise DataError(f"empty {column}", file=str(file), row=row)
    return text


def _group(value: Any, row: int, file: Path) -> str | None:
    return _text(value, "group", row, file) or None


def _text(value: Any, column: str, row: int, file: Path) -> str:
    if value is None:
        return ""
    # JSON numbers are accepted (class "3", location 12); lists, objects and booleans are not.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{column} must be a string, got {value!r}", file=str(file), row=row)
    return str(value).strip()


def _read_csv(file: Path, required: Sequence[str]) -> list[tuple[int, dict[str, Any]]]:
    try:
        with open(file, encoding="utf-8-sig", newline="") as stream:
            reader = csv.DictReader(stream)
            if reader.fieldnames is None:
                raise DataError("empty file; expected a header row", file=str(file))
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            _require_columns(reader.fieldnames, required, file)
            return list(enumerate(reader, start=1))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"unreadable CSV: {exc}", file=str(file)) from exc


def _require_columns(present: Sequence[str], required: Sequence[str], file: Path) -> None:
    missing = [column for column in required if column not in present]
    if missing:
        label = "column" if len(missing) == 1 else "columns"
        header = ", ".join(present) or "nothing"
        raise DataError(f"missing {label} {_quoted(missing)} (header: {header})", file=str(file))


def _read_jsonl(file: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text: {exc}", file=str(file)) from exc
    return [
        (row, _json_object(line, row, file)) for row, line in enumerate(lines, 1) if line.strip()
    ]


def _json_object(line: str, row: int, file: Path) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc.msg}", file=str(file), row=row) from exc
    if not isinstance(value, dict):
        raise DataError("expected a JSON object", file=str(file), row=row)
    return value


# ---------------------------------------------------------------------------------------------
# Fingerprint


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


# ---------------------------------------------------------------------------------------------
# Validation


def validate_splits(ds: DatasetSplits, required: Sequence[str], check_images: bool = True) -> None:
    """Fail early on a dataset training would trip over.

    Every ``required`` split must exist and be non-empty; the first one is the training split
    and must hold every class. With ``check_images`` every image of the required splits is fully
    decoded (``verify()`` misses truncation), in a few threads since PIL decodes without the GIL.
    """
    if not ds.classnames:
        raise DataError("no classes", file=ds.source)
    for name in required:
        if not ds.split(name):
            raise DataError(f"split '{name}' is empty", file=ds.source)
    if required:
        _check_classes_present(ds, required[0])
    if check_images:
        _check_images(ds, required)


def _check_classes_present(ds: DatasetSplits, split: str) -> None:
    counts = ds.counts()[split]
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        listed = ", ".join(f"empty class '{name}'" for name in empty)
        raise DataError(f"{listed} in training split '{split}'", file=ds.source)


def _check_images(ds: DatasetSplits, names: Sequence[str]) -> None:
    unique = {s.path: s for name in dict.fromkeys(names) for s in ds.split(name)}
    samples = list(unique.values())
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(samples), _CHECK_CHUNK):
            chunk = samples[start : start + _CHECK_CHUNK]
            for sample, problem in zip(
                chunk, pool.map(image_problem, [s.path for s in chunk]), strict=True
            ):
                if problem is not None:
                    raise _image_error(ds, sample, problem)


def image_problem(path: str) -> str | None:
    """Why the image at ``path`` cannot be decoded, or None when it can."""
    try:
        with Image.open(path) as image:
            image.draft("RGB", (_CHECK_SIZE, _CHECK_SIZE))
            image.load()
    except (
        Exception
    ) as exc:  # PIL plugins raise OSError, SyntaxError, struct.error, ... on bad data
        return f"{type(exc).__name__}: {exc}"
    return None


def _image_error(ds: DatasetSplits, sample: Sample, problem: str) -> DataError:
    if sample.row is not None:
        message = f"cannot read image {sample.path}: {problem}"
        return DataError(message, file=ds.source, row=sample.row)
    return DataError(f"cannot read image: {problem}", file=sample.path)


# ---------------------------------------------------------------------------------------------
# Class descriptions


def load_descriptions(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read ``{classname: "text" | ["text", ...]}`` from .json, .yaml or .yml."""
    file = _existing_file(path)
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
        problems.append(f"no description for class(es) {_quoted(missing)}")
    if unknown:
        problems.append(f"descriptions for unknown class(es) {_quoted(unknown)}")
    if problems:
        raise DataError("; ".join(problems), file=file)


def _has_text(texts: Sequence[str] | None) -> bool:
    if texts is None:
        return False
    # A bare string is a Sequence[str] too; read it as one description, not as characters.
    items = [texts] if isinstance(texts, str) else texts
    return any(isinstance(item, str) and item.strip() for item in items)


# ---------------------------------------------------------------------------------------------
# Training-time dataset


def read_image(path: str) -> Image.Image:
    """The image at ``path`` as RGB, or a DataError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # see image_problem: PIL's exception types vary by plugin
        raise DataError(f"cannot read image: {type(exc).__name__}: {exc}", file=path) from exc


class ImageDataset(Dataset[tuple[Any, int, int]]):
    """Samples as (transformed RGB image, label, index); the index keys per-image caches."""

    def __init__(
        self,
        samples: Sequence[Sample],
        classnames: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.samples = tuple(samples)
        self.classnames = tuple(classnames)
        self.transform = transform
        bad = [s for s in self.samples if not 0 <= s.label < len(self.classnames)]
        if bad:
            message = f"label {bad[0].label} out of range for {len(self.classnames)} classes"
            raise DataError(message, file=bad[0].path)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        sample = self.samples[i]
        image = read_image(sample.path)
        return (self.transform(image) if self.transform else image), sample.label, i

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    @property
    def groups(self) -> list[str | None]:
        return [s.group for s in self.samples]


# ---------------------------------------------------------------------------------------------
# WILDS (iWildCam v2.0, FMoW v1.1) from a local copy


def load_wilds(root: str | Path, name: Literal["iwildcam", "fmow"]) -> DatasetSplits:
    """Read a local WILDS copy; ``root`` holds ``iwildcam_v2.0/`` or ``fmow_v1.1/`` (or is it).

    Splits: train, val (WILDS id_val), test (id_test), ood_val (val), ood_test (test). Groups are
    camera locations (iWildCam) or regions (FMoW), the paper's worst-group axes. Scoring as WILDS
    does: iWildCam's macro-F1 over the classes present in the labels, FMoW's worst-region
    accuracy without the region "Other".
    """
    base = _existing_dir(root)
    if name == "iwildcam":
        ds = _load_iwildcam(_wilds_folder(base, "iwildcam_v2.0", "metadata.csv"))
        return _scored(ds, Scoring(macro_f1_over="labels"))
    if name == "fmow":
        ds = _load_fmow(_wilds_folder(base, "fmow_v1.1", "rgb_metadata.csv"))
        return _scored(ds, Scoring(ignore_groups=(FMOW_IGNORED_REGION,)))
    raise DataError(f"unknown WILDS dataset '{name}' (expected 'iwildcam' or 'fmow')")


def _scored(ds: DatasetSplits, scoring: Scoring) -> DatasetSplits:
    """WILDS scores every split of a dataset the same way."""
    return replace(ds, scoring={name: scoring for name in ds.splits})


def _wilds_folder(base: Path, folder: str, marker: str) -> Path:
    for candidate in (base / folder, base):
        if (candidate / marker).is_file():
            return candidate
    raise DataError(f"{folder}/{marker} not found", file=str(base))


def _load_iwildcam(folder: Path) -> DatasetSplits:
    meta = folder / "metadata.csv"
    rows = _read_csv(meta, ("split", "y", "filename"))
    if not rows:
        raise DataError("no data rows", file=str(meta))
    labels = [_int_field(record, "y", row, meta) for row, record in rows]
    names = _iwildcam_classnames(folder / "categories.csv", max(labels) + 1)
    splits: dict[str, list[Sample]] = {}
    for (row, record), label in zip(rows, labels, strict=True):
        split = _wilds_split(record["split"], row, meta)
        path = _wilds_image(folder / "train" / _field(record, "filename", row, meta), row, meta)
        group = _group(record.get("location_remapped") or record.get("location"), row, meta)
        splits.setdefault(split, []).append(Sample(path, label, group, row))
    return _make(names, splits, meta, folder)


def _iwildcam_classnames(file: Path, n: int) -> tuple[str, ...]:
    if not file.is_file():
        raise DataError("categories.csv not found (it gives the class names)", file=str(file))
    names: dict[int, str] = {}
    for _, record in _read_csv(file, ("y", "name")):
        y = _maybe_int(record.get("y"))
        # Categories outside WILDS' label set carry a placeholder y (e.g. 99999): skip them.
        if y is not None and 0 <= y < n:
            names[y] = (record.get("name") or "").strip()
    missing = [y for y in range(n) if not names.get(y)]
    if missing:
        raise DataError(f"no name for label y={missing[0]}", file=str(file))
    return _checked_classnames([names[y] for y in range(n)], file)


def _load_fmow(folder: Path) -> DatasetSplits:
    meta = folder / "rgb_metadata.csv"
    rows = _read_csv(meta, ("split", "category"))
    if not rows:
        raise DataError("no data rows", file=str(meta))
    regions = _fmow_regions(folder, rows)
    timed = "timestamp" in rows[0][1]
    index = {name: i for i, name in enumerate(FMOW_CATEGORIES)}
    splits: dict[str, list[Sample]] = {}
    for i, (row, record) in enumerate(rows):
        split = _fmow_split(record, row, meta, timed)
        if split is not None:
            # Images are named by their 0-based row in the full metadata table.
            path = _wilds_image(folder / "images" / f"rgb_img_{i}.png", row, meta)
            label = _fmow_label(record, index, row, meta)
            splits.setdefault(split, []).append(Sample(path, label, regions[i], row))
    return _make(FMOW_CATEGORIES, splits, meta, folder)


def _fmow_label(record: Mapping[str, Any], index: Mapping[str, int], row: int, meta: Path) -> int:
    category = (record.get("category") or "").strip()
    if category not in index:
        raise DataError(f"unknown label '{category}'", file=str(meta), row=row)
    return index[category]


def _fmow_split(record: Mapping[str, Any], row: int, meta: Path, timed: bool) -> str | None:
    """Our split for an FMoW row, or None for rows WILDS leaves out (seq, off-period rows).

    The released metadata keeps fMoW's own train/val/test/seq split plus a timestamp, and WILDS
    re-splits by year; a table without timestamps is read as already using WILDS' split names.
    """
    split = (record.get("split") or "").strip()
    if not timed:
        return _wilds_split(split, row, meta)
    if split == "seq":
        return None
    if split not in ("train", "val", "test"):
        raise DataError(f"unknown split '{split}'", file=str(meta), row=row)
    year = _year(record.get("timestamp"), row, meta)
    if year >= FMOW_OOD_TEST_YEAR:
        return "ood_test" if split == "test" else None
    if year >= FMOW_OOD_VAL_YEAR:
        return "ood_val" if split == "val" else None
    return split


def _fmow_regions(folder: Path, rows: Sequence[tuple[int, dict[str, Any]]]) -> list[str | None]:
    meta = folder / "rgb_metadata.csv"
    if "region" in rows[0][1]:
        return [_group(record.get("region"), row, meta) for row, record in rows]
    mapping = _country_regions(folder / "country_code_mapping.csv")
    # As in WILDS: a country missing from the mapping counts as region "Other".
    return [mapping.get((r.get("country_code") or "").strip(), "Other") for _, r in rows]


def _country_regions(file: Path) -> dict[str, str]:
    if not file.is_file():
        message = "country_code_mapping.csv not found (it maps country_code to region)"
        raise DataError(message, file=str(file))
    rows = _read_csv(file, ("alpha-3", "region"))
    return {(r["alpha-3"] or "").strip(): (r["region"] or "").strip() or "Other" for _, r in rows}


def _year(value: Any, row: int, meta: Path) -> int:
    text = (value or "").strip()
    if not text[:4].isdigit():
        raise DataError(f"bad timestamp '{text}'", file=str(meta), row=row)
    return int(text[:4])


def _wilds_split(value: str, row: int, meta: Path) -> str:
    split = (value or "").strip()
    if split not in WILDS_SPLITS:
        expected = _quoted(WILDS_SPLITS)
        raise DataError(f"unknown split '{split}' (expected {expected})", file=str(meta), row=row)
    return WILDS_SPLITS[split]


def _wilds_image(path: Path, row: int, meta: Path) -> str:
    if not os.path.isfile(path):
        raise DataError(f"image file not found: {path}", file=str(meta), row=row)
    return str(path)


def _int_field(record: Mapping[str, Any], column: str, row: int, file: Path) -> int:
    value = _maybe_int(record.get(column))
    if value is None or value < 0:
        text = record.get(column)
        raise DataError(f"{column} must be an integer >= 0, got {text!r}", file=str(file), row=row)
    return value


def _maybe_int(value: Any) -> int | None:
    # pandas writes an int column holding any NaN as floats ("12.0"); accept those too.
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


# ---------------------------------------------------------------------------------------------
# ImageNet and its distribution shifts from a local copy


def load_imagenet_variants(root: str | Path) -> DatasetSplits:
    """Read ``root/train/<wnid>/*``, ``root/val/<wnid>/*`` and any OOD sets beside them.

    The OOD sets (``imagenet-v2``, ``imagenet-sketch``, ``imagenet-r``, ``imagenet-a``,
    ``objectnet``) become splits ``ood_<name>``. Their folders are wnids, or class indices as
    ImageNetV2 ships them; ImageNet-R/A cover 200 classes and are scored on those (their
    ``scoring``: logits projected onto the classes of their folders before the softmax).
    Class names come from ``root/classnames.txt`` (one per line, wnid order), else the wnids.
    """
    base = _existing_dir(root)
    if not (base / "train").is_dir():
        raise DataError("train/ folder not found", file=str(base))
    wnids = _subdirs(base / "train")
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
    return replace(_make(names, splits, base, base), scoring=scoring)


def _imagenet_subset(folder: Path, index: Mapping[str, int]) -> tuple[int, ...]:
    """The classes a variant covers: its class folders (200 for ImageNet-R and -A)."""
    return tuple(sorted(_imagenet_label(folder / name, index) for name in _subdirs(folder)))


def _imagenet_split(folder: Path, index: Mapping[str, int]) -> list[Sample]:
    by_class = _scan_split(folder)
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
    return _checked_classnames(names, file)
