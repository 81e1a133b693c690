"""Datasets as labelled file listings: image folders, manifests, and local WILDS/ImageNet copies.

Every loader returns a ``DatasetSplits``: class names, named splits of ``Sample`` (absolute image
path, label index, optional group for worst-group accuracy) and a fingerprint of the listing, so
a run can record exactly which data it saw. Images are only opened under one policy
(``images``): by ``validate_splits`` (once, up front, so a bad file fails the job before
training) and by ``ImageDataset`` (at training time). Every bad-data condition raises
``DataError`` naming the file and, for tables, the 1-based row.

One module per concern; this package re-exports the public names (``from models.data import X``).
"""

from models.data.dataset import ImageDataset
from models.data.descriptions import check_descriptions, load_descriptions
from models.data.fingerprints import fingerprint_samples
from models.data.folders import load_image_folder
from models.data.imagenet import IMAGENET_SUBSET_VARIANTS, IMAGENET_VARIANTS, load_imagenet_variants
from models.data.images import (
    ImageError,
    ImageLimits,
    image_problem,
    open_image,
    read_image,
    to_rgb,
)
from models.data.listing import IMAGE_EXTENSIONS, dataset_root
from models.data.manifests import MANIFEST_COLUMNS, load_manifest
from models.data.sources import open_dataset
from models.data.splits import DatasetSplits, Sample, Scoring
from models.data.validation import empty_classes, image_problems, validate_splits
from models.data.wilds import (
    FMOW_CATEGORIES,
    FMOW_IGNORED_REGION,
    FMOW_OOD_TEST_YEAR,
    FMOW_OOD_VAL_YEAR,
    WILDS_SPLITS,
    load_wilds,
)

__all__ = [
    "FMOW_CATEGORIES",
    "FMOW_IGNORED_REGION",
    "FMOW_OOD_TEST_YEAR",
    "FMOW_OOD_VAL_YEAR",
    "IMAGENET_SUBSET_VARIANTS",
    "IMAGENET_VARIANTS",
    "IMAGE_EXTENSIONS",
    "MANIFEST_COLUMNS",
    "WILDS_SPLITS",
    "DatasetSplits",
    "ImageDataset",
    "ImageError",
    "ImageLimits",
    "Sample",
    "Scoring",
    "check_descriptions",
    "dataset_root",
    "empty_classes",
    "fingerprint_samples",
    "image_problem",
    "image_problems",
    "load_descriptions",
    "load_image_folder",
    "load_imagenet_variants",
    "load_manifest",
    "load_wilds",
    "open_dataset",
    "open_image",
    "to_rgb",
    "read_image",
    "validate_splits",
]
