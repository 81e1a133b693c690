"""Dataset loading, fingerprints and every bad-data error, on tiny images made in tmp_path."""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.data import (
    FMOW_CATEGORIES,
    DatasetSplits,
    ImageDataset,
    ImageError,
    ImageLimits,
    Sample,
    Scoring,
    check_descriptions,
    empty_classes,
    fingerprint_samples,
    image_problems,
    load_descriptions,
    load_image_folder,
    load_imagenet_variants,
    load_manifest,
    load_wilds,
    open_dataset,
    open_image,
    validate_splits,
)
from models.errors import DataError


def make_image(path: Path, size: int = 8, seed: int = 0, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_folder(root: Path, layout: Mapping[str, Mapping[str, int]]) -> Path:
    """``layout``: split -> class -> number of images (0 makes an empty class folder)."""
    for split, classes in layout.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                make_image(root / split / name / f"{name}_{i}.png", seed=i)
    return root


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def manifest_images(root: Path) -> None:
    for name in ("a.png", "b.png", "c.png", "sub/d.png"):
        make_image(root / "img" / name)


LAYOUT = {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}}
ROWS = [
    ["img/a.png", "dog", "train", "north"],
    ["img/b.png", "cat", "train", "south"],
    ["img/c.png", "cat", "val", ""],
    ["img/sub/d.png", "dog", "val", "north"],
]


# --- image folders -------------------------------------------------------------------------


def test_image_folder_lists_splits_classes_and_samples(tmp_path: Path) -> None:
    ds = load_image_folder(make_folder(tmp_path / "ds", LAYOUT))
    assert ds.classnames == ("cat", "dog")
    assert ds.counts() == {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 1}}
    assert ds.source == str(tmp_path / "ds")
    assert len(ds.fingerprint) == 64
    sample = ds.split("train")[2]
    assert Path(sample.path).is_absolute() and Path(sample.path).parent.name == "dog"
    assert (sample.label, sample.group, sample.row) == (1, None, None)
    validate_splits(ds, ["train", "val"])


def test_image_folder_keeps_underscores_and_skips_non_images(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"train": {"sea_lion": 1}})
    (root / "train" / "sea_lion" / "notes.txt").write_text("not an image")
    (root / "train" / "sea_lion" / "._x.png").write_bytes(b"resource fork")
    assert load_image_folder(root).counts() == {"train": {"sea_lion": 1}}


def test_image_folder_classnames_parameter_sets_order(tmp_path: Path) -> None:
    ds = load_image_folder(make_folder(tmp_path, LAYOUT), classnames=["dog", "cat", "bird"])
    assert ds.classnames == ("dog", "cat", "bird")
    assert ds.counts()["train"] == {"dog": 2, "cat": 2, "bird": 0}


def test_image_folder_unknown_class_folder_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path, LAYOUT)
    with pytest.raises(DataError, match="unknown label 'dog'") as info:
        load_image_folder(root, classnames=["cat"])
    assert info.value.file == str(root / "train" / "dog")


def test_image_folder_without_split_level_is_explained(tmp_path: Path) -> None:
    make_image(tmp_path / "cat" / "x.png")
    with pytest.raises(DataError, match="not in a class folder"):
        load_image_folder(tmp_path)


def test_empty_class_folder_is_listed_and_rejected_for_training(tmp_path: Path) -> None:
    root = make_folder(tmp_path, {"train": {"cat": 2, "dog": 0}, "val": {"cat": 1, "dog": 1}})
    ds = load_image_folder(root)
    assert ds.classnames == ("cat", "dog")
    with pytest.raises(DataError, match="empty class 'dog'"):
        validate_splits(ds, ["train", "val"])
    validate_splits(ds, ["val"])  # only the first (training) split must hold every class


def test_missing_split_is_named_with_the_available_ones(tmp_path: Path) -> None:
    ds = load_image_folder(make_folder(tmp_path, LAYOUT))
    with pytest.raises(DataError, match=r"no split 'ood_test' \(available: 'train', 'val'\)"):
        validate_splits(ds, ["train", "val", "ood_test"], check_images=False)


# --- manifests -----------------------------------------------------------------------------


def test_csv_manifest_resolves_paths_and_reads_groups(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    file = write_csv(tmp_path / "m.csv", ["path", "label", "split", "group"], ROWS)
    ds = load_manifest(file)
    assert ds.classnames == ("cat", "dog")
    assert ds.source == str(file)
    train = ds.split("train")
    assert train[0] == Sample(str(tmp_path / "img" / "a.png"), 1, "north", 1)
    assert [s.group for s in ds.split("val")] == [None, "north"]
    assert [s.row for s in ds.split("val")] == [3, 4]
    validate_splits(ds, ["train", "val"])


def test_jsonl_manifest_matches_csv(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    keys = ("path", "label", "split", "group")
    records = [dict(zip(keys, row, strict=True)) for row in ROWS]
    from_jsonl = load_manifest(write_jsonl(tmp_path / "m.jsonl", records))
    from_csv = load_manifest(write_csv(tmp_path / "m.csv", keys, ROWS))
    assert from_jsonl.splits == from_csv.splits
    assert from_jsonl.fingerprint == from_csv.fingerprint


def test_manifest_absolute_paths_and_classnames_order(tmp_path: Path) -> None:
    image = make_image(tmp_path / "elsewhere" / "x.png")
    file = write_csv(tmp_path / "sub" / "m.csv", ["path", "label", "split"], [[image, "b", "t"]])
    ds = load_manifest(file, classnames=["a", "b"])
    assert ds.split("t") == (Sample(str(image), 1, None, 1),)


def test_manifest_unknown_label_names_file_and_row(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    file = write_csv(tmp_path / "m.csv", ["path", "label", "split"], [r[:3] for r in ROWS])
    with pytest.raises(DataError, match="unknown label 'dog'") as info:
        load_manifest(file, classnames=["cat"])
    assert (info.value.file, info.value.row) == (str(file), 1)
    assert str(info.value).startswith(f"{file}, row 1: ")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (["", "cat", "train"], "empty path"),
        (["img/a.png", " ", "train"], "empty label"),
        (["img/a.png", "cat", ""], "empty split"),
        (["img/missing.png", "cat", "train"], "image file not found: img/missing.png"),
    ],
)
def test_manifest_bad_row_names_file_and_row(tmp_path: Path, row: list[str], message: str) -> None:
    manifest_images(tmp_path)
    good = ["img/b.png", "cat", "train"]
    file = write_csv(tmp_path / "m.csv", ["path", "label", "split"], [good, good, row])
    with pytest.raises(DataError, match=message) as info:
        load_manifest(file)
    assert (info.value.file, info.value.row) == (str(file), 3)


def test_csv_manifest_missing_column_is_named(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    file = write_csv(tmp_path / "m.csv", ["path", "label"], [["img/a.png", "cat"]])
    with pytest.raises(DataError, match="missing column 'split'") as info:
        load_manifest(file)
    assert info.value.file == str(file)


def test_jsonl_manifest_missing_column_and_bad_json_name_the_row(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    record = {"path": "img/a.png", "label": "cat", "split": "train"}
    file = write_jsonl(tmp_path / "m.jsonl", [record, {"path": "img/b.png", "label": "cat"}])
    with pytest.raises(DataError, match="missing column 'split'") as info:
        load_manifest(file)
    assert (info.value.file, info.value.row) == (str(file), 2)
    file.write_text(json.dumps(record) + "\n\n{oops\n")
    with pytest.raises(DataError, match="not valid JSON") as info:
        load_manifest(file)
    assert info.value.row == 3


def test_open_dataset_dispatches_on_folder_and_suffix(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    file = write_csv(tmp_path / "m.csv", ["path", "label", "split"], [r[:3] for r in ROWS])
    assert open_dataset(file).source == str(file)
    folder = make_folder(tmp_path / "folder", LAYOUT)
    assert open_dataset(folder).classnames == ("cat", "dog")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match="expected a folder or a .csv/.jsonl manifest"):
        open_dataset(tmp_path / "data.txt")
    with pytest.raises(DataError, match="no such file or folder"):
        open_dataset(tmp_path / "nope")


# --- fingerprints --------------------------------------------------------------------------


def test_fingerprint_is_stable_across_copies_and_tracks_labels_and_files(tmp_path: Path) -> None:
    first = load_image_folder(make_folder(tmp_path / "a", LAYOUT))
    second = load_image_folder(make_folder(tmp_path / "elsewhere" / "b", LAYOUT))
    assert first.fingerprint == second.fingerprint
    moved = tmp_path / "b" / "train" / "cat" / "cat_0.png"
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved.rename(tmp_path / "b" / "train" / "dog" / "cat_0.png")
    assert load_image_folder(tmp_path / "b").fingerprint != first.fingerprint
    make_image(tmp_path / "a" / "val" / "cat" / "extra.png")
    assert load_image_folder(tmp_path / "a").fingerprint != first.fingerprint


def test_fingerprint_tracks_manifest_labels_and_groups(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    header = ["path", "label", "split", "group"]
    base = load_manifest(write_csv(tmp_path / "m.csv", header, ROWS)).fingerprint
    copy = tmp_path / "copy"
    manifest_images(copy)
    assert load_manifest(write_csv(copy / "m.csv", header, ROWS)).fingerprint == base
    relabelled = [["img/a.png", "cat", "train", "north"], *ROWS[1:]]
    assert load_manifest(write_csv(tmp_path / "m.csv", header, relabelled)).fingerprint != base
    regrouped = [["img/a.png", "dog", "train", "east"], *ROWS[1:]]
    assert load_manifest(write_csv(tmp_path / "m.csv", header, regrouped)).fingerprint != base


def test_fingerprint_without_root_uses_the_common_folder(tmp_path: Path) -> None:
    ds = load_image_folder(make_folder(tmp_path, LAYOUT))
    assert fingerprint_samples(ds.classnames, ds.splits) == ds.fingerprint
    assert fingerprint_samples(("dog", "cat"), ds.splits) != ds.fingerprint


# --- image checks --------------------------------------------------------------------------


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path, LAYOUT)
    bad = root / "train" / "dog" / "garbage.jpg"
    bad.write_bytes(b"this is not a jpeg at all" * 10)
    ds = load_image_folder(root)
    with pytest.raises(DataError, match="cannot read image") as info:
        validate_splits(ds, ["train", "val"])
    assert info.value.file == str(bad)
    validate_splits(ds, ["train", "val"], check_images=False)


@pytest.mark.parametrize(("suffix", "fmt"), [(".png", "PNG"), (".jpg", "JPEG")])
def test_truncated_image_is_named(tmp_path: Path, suffix: str, fmt: str) -> None:
    root = make_folder(tmp_path, LAYOUT)
    bad = make_image(root / "val" / "cat" / f"cut{suffix}", size=64, fmt=fmt)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with Image.open(bad) as image:
        assert image.size == (64, 64)  # the header is intact: only decoding the pixels fails
    with pytest.raises(DataError, match="cannot read image") as info:
        validate_splits(load_image_folder(root), ["train", "val"])
    assert info.value.file == str(bad)


def test_one_image_policy_refuses_by_size_and_shape_before_decoding(tmp_path: Path) -> None:
    limits = ImageLimits(max_pixels=1000, max_aspect_ratio=50)
    big = make_image(tmp_path / "big.png", size=40)
    with pytest.raises(ImageError, match="has 40x40 pixels, over the 1000 limit") as info:
        open_image(big, limits)
    assert info.value.too_large and info.value.file == str(big)
    thin = tmp_path / "thin.png"
    Image.new("RGB", (102, 2)).save(thin)
    with pytest.raises(ImageError, match="more than 50 times longer than wide") as info:
        open_image(thin.read_bytes())
    assert not info.value.too_large and info.value.file is None
    assert open_image(make_image(tmp_path / "ok.png").read_bytes()).mode == "RGB"


def _jpeg(size: tuple[int, int], mode: str = "RGB") -> bytes:
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_a_large_jpeg_decodes_at_a_reduced_scale_that_keeps_the_size_asked_for() -> None:
    data = _jpeg((2000, 1200))
    assert open_image(data).size == (2000, 1200)
    reduced = open_image(data, at_least=280)  # 1/4 gives 500x300; 1/8 would be under 280
    assert reduced.size == (500, 300) and reduced.mode == "RGB"
    assert open_image(data, at_least=600).size == (1000, 600)  # exactly twice: 1/2
    assert open_image(data, at_least=700).size == (2000, 1200)  # under twice: decoded whole
    assert open_image(_jpeg((2000, 1200), "L"), at_least=280).mode == "RGB"
    # Not a JPEG: decoded whole, whatever is asked for.
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1200)).save(buffer, format="PNG")
    assert open_image(buffer.getvalue(), at_least=280).size == (2000, 1200)
    # The limits hold before any decoding, at any scale.
    with pytest.raises(ImageError, match="over the 1000000 limit"):
        open_image(data, ImageLimits(max_pixels=1_000_000), at_least=280)


def test_the_policy_defaults_are_the_services() -> None:
    # The settings keep their own literal so that importing them does not import torch.
    from service.settings import Settings

    assert ImageLimits().max_pixels == Settings.model_fields["max_image_pixels"].default


def test_training_and_validation_open_images_under_the_policy(tmp_path: Path) -> None:
    root = make_folder(tmp_path, LAYOUT)
    thin = root / "train" / "dog" / "thin.png"
    Image.new("RGB", (2, 200)).save(thin)
    ds = load_image_folder(root)
    with pytest.raises(DataError, match="cannot read image: is 2x200 pixels") as info:
        validate_splits(ds, ["train", "val"])
    assert info.value.file == str(thin)
    dataset = ImageDataset(ds.split("train"), ds.classnames)
    index = [s.path for s in dataset.samples].index(str(thin))
    with pytest.raises(DataError, match="more than 50 times longer than wide"):
        dataset[index]


def test_image_problems_lists_every_bad_image_once(tmp_path: Path) -> None:
    root = make_folder(tmp_path, LAYOUT)
    bad = [root / "train" / "dog" / "a.jpg", root / "val" / "cat" / "b.jpg"]
    for path in bad:
        path.write_bytes(b"not an image")
    ds = load_image_folder(root)
    found = sorted(sample.path for sample, _ in image_problems(ds, ["train", "val", "train"]))
    assert found == sorted(str(p) for p in bad)
    assert empty_classes(ds, "train") == []


def test_bad_image_in_manifest_names_manifest_and_row(tmp_path: Path) -> None:
    manifest_images(tmp_path)
    (tmp_path / "img" / "c.png").write_bytes(b"\x89PNG broken")
    file = write_csv(tmp_path / "m.csv", ["path", "label", "split"], [r[:3] for r in ROWS])
    with pytest.raises(DataError, match="c.png") as info:
        validate_splits(load_manifest(file), ["train", "val"])
    assert (info.value.file, info.value.row) == (str(file), 3)


def test_empty_required_split_is_rejected(tmp_path: Path) -> None:
    ds = DatasetSplits(("a",), {"train": (), "val": ()}, "src", "0" * 64)
    with pytest.raises(DataError, match="split 'train' is empty"):
        validate_splits(ds, ["train"])


# --- descriptions --------------------------------------------------------------------------


def test_descriptions_from_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps({"cat": "a small feline", "dog": ["a", " b "]}))
    (tmp_path / "d.yaml").write_text("cat: a small feline\ndog:\n  - a\n  - b\n")
    expected = {"cat": ("a small feline",), "dog": ("a", "b")}
    assert load_descriptions(tmp_path / "d.json") == expected
    assert load_descriptions(tmp_path / "d.yaml") == expected
    check_descriptions(["cat", "dog"], expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"cat": ""}', "class 'cat': empty or non-text description"),
        ('{"cat": []}', "class 'cat': expected a text or a list of texts"),
        ('{"cat": ["ok", 3]}', "class 'cat': empty or non-text description"),
        ('["cat"]', "expected a non-empty mapping"),
        ("{oops", "cannot parse"),
    ],
)
def test_bad_descriptions_file(tmp_path: Path, text: str, message: str) -> None:
    file = tmp_path / "d.json"
    file.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_descriptions(file)
    assert info.value.file == str(file)


def test_class_without_description_and_unknown_class_are_named() -> None:
    with pytest.raises(DataError) as info:
        check_descriptions(
            ["cat", "dog", "sea_lion"], {"cat": ("x",), "dog": (" ",), "owl": ("y",)}
        )
    message = str(info.value)
    assert "no description for class(es) 'dog', 'sea_lion'" in message
    assert "descriptions for unknown class(es) 'owl'" in message


# --- ImageDataset --------------------------------------------------------------------------


def test_image_dataset_returns_rgb_label_and_index(tmp_path: Path) -> None:
    gray = tmp_path / "gray.png"
    Image.new("L", (8, 8), 128).save(gray)
    samples = [Sample(str(gray), 1, "g1"), Sample(str(make_image(tmp_path / "c.png")), 0)]
    dataset = ImageDataset(samples, ["a", "b"])
    image, label, index = dataset[0]
    assert (image.mode, image.size, label, index) == ("RGB", (8, 8), 1, 0)
    assert (len(dataset), dataset.labels, dataset.groups) == (2, [1, 0], ["g1", None])
    tensors = ImageDataset(samples, ["a", "b"], transform=lambda im: torch.zeros(3, *im.size))
    assert tensors[1][0].shape == (3, 8, 8)


def test_image_dataset_names_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="cannot read image") as info:
        ImageDataset([Sample(str(bad), 0)], ["a"])[0]
    assert info.value.file == str(bad)
    with pytest.raises(DataError, match="label 3 out of range"):
        ImageDataset([Sample(str(bad), 3)], ["a"])


# --- WILDS and ImageNet copies -------------------------------------------------------------


def test_wilds_iwildcam(tmp_path: Path) -> None:
    folder = tmp_path / "iwildcam_v2.0"
    splits = ["train", "train", "train", "id_val", "id_test", "val", "test"]
    rows = []
    for i, split in enumerate(splits):
        make_image(folder / "train" / f"{i}.jpg", fmt="JPEG")
        rows.append([i, split, 10 + i % 2, 100 + i, i % 3, f"{i}.jpg"])
    header = ["", "split", "location_remapped", "location", "y", "filename"]
    write_csv(folder / "metadata.csv", header, rows)
    categories = [[0, "empty"], [1, "tayassu pecari"], [2, "meleagris ocellata"], [99999, "x"]]
    write_csv(folder / "categories.csv", ["y", "name"], categories)
    ds = load_wilds(tmp_path, "iwildcam")
    assert ds.classnames == ("empty", "tayassu pecari", "meleagris ocellata")
    assert sorted(ds.splits) == ["ood_test", "ood_val", "test", "train", "val"]
    assert [s.label for s in ds.split("train")] == [0, 1, 2]
    assert [s.group for s in ds.split("train")] == ["10", "11", "10"]
    assert ds.split("ood_test")[0] == Sample(str(folder / "train" / "6.jpg"), 0, "10", 7)
    assert load_wilds(folder, "iwildcam").fingerprint == ds.fingerprint
    validate_splits(ds, ["train", "val", "test", "ood_val", "ood_test"])
    # Scored as WILDS scores iWildCam: macro-F1 over the classes present in the labels.
    assert {name: rule.macro_f1_over for name, rule in ds.scoring.items()} == dict.fromkeys(
        ds.splits, "labels"
    )


def test_wilds_iwildcam_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="iwildcam_v2.0/metadata.csv not found"):
        load_wilds(tmp_path, "iwildcam")
    folder = tmp_path / "iwildcam_v2.0"
    write_csv(folder / "metadata.csv", ["split", "y", "filename"], [["train", 0, "0.jpg"]])
    with pytest.raises(DataError, match="categories.csv not found"):
        load_wilds(tmp_path, "iwildcam")
    write_csv(folder / "categories.csv", ["y", "name"], [[0, "empty"]])
    with pytest.raises(DataError, match="image file not found") as info:
        load_wilds(tmp_path, "iwildcam")
    assert (info.value.file, info.value.row) == (str(folder / "metadata.csv"), 1)


def test_wilds_fmow_time_splits_and_regions(tmp_path: Path) -> None:
    folder = tmp_path / "fmow_v1.1"
    rows = [  # split, category, country_code, timestamp -> our split
        ["train", "airport", "USA", "2010-01-01T00:00:00Z"],  # train
        ["val", "zoo", "FRA", "2012-05-01T00:00:00Z"],  # val (WILDS id_val)
        ["test", "zoo", "KEN", "2011-05-01T00:00:00Z"],  # test (id_test)
        ["val", "dam", "AUS", "2014-05-01T00:00:00Z"],  # ood_val
        ["test", "dam", "XXX", "2017-05-01T00:00:00Z"],  # ood_test, unmapped country: Other
        ["seq", "dam", "USA", "2017-05-01T00:00:00Z"],  # sequestered: left out
        ["train", "dam", "USA", "2016-05-01T00:00:00Z"],  # train after 2013: left out
    ]
    for i in range(len(rows)):
        make_image(folder / "images" / f"rgb_img_{i}.png")
    write_csv(folder / "rgb_metadata.csv", ["split", "category", "country_code", "timestamp"], rows)
    mapping = [["USA", "Americas"], ["FRA", "Europe"], ["KEN", "Africa"], ["AUS", "Oceania"]]
    write_csv(folder / "country_code_mapping.csv", ["alpha-3", "region"], mapping)
    ds = load_wilds(tmp_path, "fmow")
    assert ds.classnames == FMOW_CATEGORIES and len(ds.classnames) == 62
    summary = {
        name: [(Path(s.path).name, ds.classnames[s.label], s.group) for s in samples]
        for name, samples in ds.splits.items()
    }
    assert summary == {
        "train": [("rgb_img_0.png", "airport", "Americas")],
        "val": [("rgb_img_1.png", "zoo", "Europe")],
        "test": [("rgb_img_2.png", "zoo", "Africa")],
        "ood_val": [("rgb_img_3.png", "dam", "Oceania")],
        "ood_test": [("rgb_img_4.png", "dam", "Other")],
    }
    # Scored as WILDS scores FMoW: worst-region accuracy without the region "Other".
    assert all(ds.scoring[name].ignore_groups == ("Other",) for name in ds.splits)


def test_wilds_fmow_bad_category_and_missing_mapping(tmp_path: Path) -> None:
    folder = tmp_path / "fmow_v1.1"
    make_image(folder / "images" / "rgb_img_0.png")
    header = ["split", "category", "region"]
    meta = write_csv(folder / "rgb_metadata.csv", header, [["id_val", "castle", "Europe"]])
    with pytest.raises(DataError, match="unknown label 'castle'") as info:
        load_wilds(tmp_path, "fmow")
    assert (info.value.file, info.value.row) == (str(meta), 1)
    write_csv(meta, ["split", "category", "country_code"], [["id_val", "zoo", "FRA"]])
    with pytest.raises(DataError, match="country_code_mapping.csv not found"):
        load_wilds(tmp_path, "fmow")


def test_imagenet_variants(tmp_path: Path) -> None:
    wnids = ["n01440764", "n01443537", "n01484850"]
    for i, wnid in enumerate(wnids):
        make_image(tmp_path / "train" / wnid / f"t{i}.JPEG", fmt="JPEG")
        make_image(tmp_path / "val" / wnid / f"v{i}.JPEG", fmt="JPEG")
    make_image(tmp_path / "imagenet-r" / wnids[2] / "r.jpg")
    make_image(tmp_path / "imagenet-v2" / "1" / "v2.jpeg", fmt="JPEG")
    make_image(tmp_path / "imagenet-sketch" / wnids[0] / "s.JPEG", fmt="JPEG")
    ds = load_imagenet_variants(tmp_path)
    assert ds.classnames == tuple(wnids)
    expected = ["ood_imagenet-r", "ood_imagenet-sketch", "ood_imagenet-v2", "train", "val"]
    assert sorted(ds.splits) == expected
    assert [s.label for s in ds.split("ood_imagenet-r")] == [2]
    assert [s.label for s in ds.split("ood_imagenet-v2")] == [1]
    assert [s.label for s in ds.split("val")] == [0, 1, 2]
    # ImageNet-R is scored on the classes it covers; the other sets on all of them.
    assert ds.scoring == {"ood_imagenet-r": Scoring(classes=(2,))}
    (tmp_path / "classnames.txt").write_text("tench\ngoldfish\ngreat white shark\n")
    assert load_imagenet_variants(tmp_path).classnames == ("tench", "goldfish", "great white shark")
    make_image(tmp_path / "imagenet-a" / "n99999999" / "a.jpg")
    with pytest.raises(DataError, match="neither a training class wnid"):
        load_imagenet_variants(tmp_path)


def test_imagenet_classnames_must_match_classes(tmp_path: Path) -> None:
    make_image(tmp_path / "train" / "n01" / "a.png")
    (tmp_path / "classnames.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="2 class names for 1 class folders"):
        load_imagenet_variants(tmp_path)


# --- confinement (within=): every file a dataset reads resolves inside its root ------------

OUTSIDE = "the path resolves outside the dataset's folder"


def test_within_refuses_outside_manifest_rows_with_one_message(tmp_path: Path) -> None:
    root = tmp_path / "set"
    manifest_images(root)
    existing = make_image(tmp_path / "outside.png")
    messages = []
    for bad in (str(existing), str(tmp_path / "missing.png"), "../outside.png", "/etc/hostname"):
        file = write_csv(root / "m.csv", ["path", "label", "split"], [[bad, "cat", "train"]])
        with pytest.raises(DataError) as info:
            load_manifest(file, within=root)
        messages.append(str(info.value))
    assert messages == [f"{root / 'm.csv'}, row 1: {OUTSIDE}"] * 4
    # Without ``within`` (the CLI) an absolute path elsewhere is still read.
    file = write_csv(root / "m.csv", ["path", "label", "split"], [[existing, "cat", "train"]])
    assert load_manifest(file).split("train")[0].path == str(existing)


def test_within_accepts_paths_that_resolve_inside(tmp_path: Path) -> None:
    root = tmp_path / "set"
    manifest_images(root)
    (root / "alias").symlink_to(root / "img")  # a link that stays inside is fine
    rows = [["img/sub/../a.png", "cat", "train"], [str(root / "alias" / "b.png"), "dog", "train"]]
    file = write_csv(root / "m.csv", ["path", "label", "split"], rows)
    assert len(load_manifest(file, within=root).split("train")) == 2


def test_within_refuses_class_folders_and_images_linked_out(tmp_path: Path) -> None:
    outside = make_folder(tmp_path / "outside", {"train": {"cat": 1}})
    root = make_folder(tmp_path / "set", {"train": {"dog": 1}})
    assert load_image_folder(root, within=root).classnames == ("dog",)
    (root / "train" / "cat").symlink_to(outside / "train" / "cat")
    with pytest.raises(DataError) as info:
        open_dataset(root, within=root)
    assert str(info.value) == f"train/cat: {OUTSIDE}"
    (root / "train" / "cat").unlink()
    (root / "train" / "dog" / "x.png").symlink_to(outside / "train" / "cat" / "cat_0.png")
    with pytest.raises(DataError) as info:
        open_dataset(root, within=root)
    assert str(info.value) == f"train/dog/x.png: {OUTSIDE}"
    assert open_dataset(root).classnames == ("dog",)  # unconfined, the link is followed


def test_dataset_root_is_the_folder_or_the_manifests_folder(tmp_path: Path) -> None:
    from models.data import dataset_root

    manifest_images(tmp_path)
    file = write_csv(tmp_path / "m.csv", ["path", "label", "split"], [r[:3] for r in ROWS])
    assert dataset_root(file) == tmp_path.resolve()
    assert dataset_root(tmp_path / "img") == (tmp_path / "img").resolve()
