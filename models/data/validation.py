"""Fail early on a dataset training would trip over: missing splits, empty classes, bad images."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from models.data.images import ImageLimits, image_problem
from models.data.splits import DatasetSplits, Sample
from models.errors import DataError

_CHECK_CHUNK = 1024


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
        for sample, problem in image_problems(ds, required):
            raise _image_error(ds, sample, problem)


def empty_classes(ds: DatasetSplits, split: str) -> list[str]:
    """The classes without a sample in ``split``."""
    return [name for name, count in ds.counts()[split].items() if count == 0]


def _check_classes_present(ds: DatasetSplits, split: str) -> None:
    empty = empty_classes(ds, split)
    if empty:
        listed = ", ".join(f"empty class '{name}'" for name in empty)
        raise DataError(f"{listed} in training split '{split}'", file=ds.source)


def image_problems(
    ds: DatasetSplits,
    names: Sequence[str],
    limits: ImageLimits | None = None,
    workers: int | None = None,
) -> Iterator[tuple[Sample, str]]:
    """Each unusable image of the splits ``names`` (each file once) with its problem, in order.

    Decoded in ``workers`` threads (default: up to 8), since PIL decodes without the GIL; lazily,
    a chunk at a time, so a caller that stops at the first problem decodes little more.
    """
    unique = {s.path: s for name in dict.fromkeys(names) for s in ds.split(name)}
    samples = list(unique.values())
    threads = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(samples), _CHECK_CHUNK):
            chunk = samples[start : start + _CHECK_CHUNK]
            found = pool.map(lambda s: image_problem(s.path, limits), chunk)
            for sample, problem in zip(chunk, found, strict=True):
                if problem is not None:
                    yield sample, problem


def _image_error(ds: DatasetSplits, sample: Sample, problem: str) -> DataError:
    if sample.row is not None:
        message = f"cannot read image {sample.path}: {problem}"
        return DataError(message, file=ds.source, row=sample.row)
    return DataError(f"cannot read image: {problem}", file=sample.path)
