"""The types every loader returns: labelled samples grouped into named splits."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from models.errors import DataError


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
            available = quoted(self.splits) or "none"
            raise DataError(f"no split '{name}' (available: {available})", file=self.source)
        return self.splits[name]

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: _class_counts(s, self.classnames) for name, s in self.splits.items()}


def _class_counts(samples: Sequence[Sample], classnames: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(classnames, 0)
    for sample in samples:
        counts[classnames[sample.label]] += 1
    return counts


def quoted(names: Iterable[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
