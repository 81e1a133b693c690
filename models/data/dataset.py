"""The training-time dataset: samples opened under the image policy and transformed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from models.data.images import read_image
from models.data.splits import Sample
from models.errors import DataError


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
