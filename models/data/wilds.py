"""WILDS (iWildCam v2.0, FMoW v1.1) from a local copy."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from models.data.listing import checked_classnames, existing_dir, make_splits
from models.data.splits import DatasetSplits, Sample, Scoring, quoted
from models.data.tables import field, group, read_csv
from models.errors import DataError

# WILDS split name -> ours: the in-distribution splits become val/test, the shifted ones ood_*.
WILDS_SPLITS = {
    "train": "train",
    "id_val": "val",
    "id_test": "test",
    "val": "ood_val",
    "test": "ood_test",
}

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


def load_wilds(root: str | Path, name: Literal["iwildcam", "fmow"]) -> DatasetSplits:
    """Read a local WILDS copy; ``root`` holds ``iwildcam_v2.0/`` or ``fmow_v1.1/`` (or is it).

    Splits: train, val (WILDS id_val), test (id_test), ood_val (val), ood_test (test). Groups are
    camera locations (iWildCam) or regions (FMoW), the paper's worst-group axes. Scoring as WILDS
    does: iWildCam's macro-F1 over the classes present in the labels, FMoW's worst-region
    accuracy without the region "Other".
    """
    base = existing_dir(root)
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
    rows = read_csv(meta, ("split", "y", "filename"))
    if not rows:
        raise DataError("no data rows", file=str(meta))
    labels = [_int_field(record, "y", row, meta) for row, record in rows]
    names = _iwildcam_classnames(folder / "categories.csv", max(labels) + 1)
    splits: dict[str, list[Sample]] = {}
    for (row, record), label in zip(rows, labels, strict=True):
        split = _wilds_split(record["split"], row, meta)
        path = _wilds_image(folder / "train" / field(record, "filename", row, meta), row, meta)
        location = group(record.get("location_remapped") or record.get("location"), row, meta)
        splits.setdefault(split, []).append(Sample(path, label, location, row))
    return make_splits(names, splits, meta, folder)


def _iwildcam_classnames(file: Path, n: int) -> tuple[str, ...]:
    if not file.is_file():
        raise DataError("categories.csv not found (it gives the class names)", file=str(file))
    names: dict[int, str] = {}
    for _, record in read_csv(file, ("y", "name")):
        y = _maybe_int(record.get("y"))
        # Categories outside WILDS' label set carry a placeholder y (e.g. 99999): skip them.
        if y is not None and 0 <= y < n:
            names[y] = (record.get("name") or "").strip()
    missing = [y for y in range(n) if not names.get(y)]
    if missing:
        raise DataError(f"no name for label y={missing[0]}", file=str(file))
    return checked_classnames([names[y] for y in range(n)], file)


def _load_fmow(folder: Path) -> DatasetSplits:
    meta = folder / "rgb_metadata.csv"
    rows = read_csv(meta, ("split", "category"))
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
    return make_splits(FMOW_CATEGORIES, splits, meta, folder)


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
        return [group(record.get("region"), row, meta) for row, record in rows]
    mapping = _country_regions(folder / "country_code_mapping.csv")
    # As in WILDS: a country missing from the mapping counts as region "Other".
    return [mapping.get((r.get("country_code") or "").strip(), "Other") for _, r in rows]


def _country_regions(file: Path) -> dict[str, str]:
    if not file.is_file():
        message = "country_code_mapping.csv not found (it maps country_code to region)"
        raise DataError(message, file=str(file))
    rows = read_csv(file, ("alpha-3", "region"))
    return {(r["alpha-3"] or "").strip(): (r["region"] or "").strip() or "Other" for _, r in rows}


def _year(value: Any, row: int, meta: Path) -> int:
    text = (value or "").strip()
    if not text[:4].isdigit():
        raise DataError(f"bad timestamp '{text}'", file=str(meta), row=row)
    return int(text[:4])


def _wilds_split(value: str, row: int, meta: Path) -> str:
    split = (value or "").strip()
    if split not in WILDS_SPLITS:
        expected = quoted(WILDS_SPLITS)
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
