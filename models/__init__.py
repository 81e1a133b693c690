"""Robust fine-tuning of zero-shot image classifiers (DRM, FLYP, CE, WiSE-FT) on open_clip.

A library: it knows nothing of web frameworks, task queues or databases, and reads no
environment variables. Callers pass configs, paths and devices.
"""

from models._version import __version__
from models.artifacts import Artifact, load_artifact, read_card, save_artifact
from models.backbone import Backbone, create_backbone, list_architectures, resolve_device
from models.config import (
    BackboneConfig,
    DataConfig,
    HeadConfig,
    ObjectiveConfig,
    RunConfig,
    TrainConfig,
    WiseConfig,
    from_dict,
    load_run_config,
    to_dict,
)
from models.data import (
    DatasetSplits,
    ImageDataset,
    Sample,
    check_descriptions,
    load_descriptions,
    open_dataset,
    validate_splits,
)
from models.errors import (
    ArtifactError,
    BackboneError,
    Cancelled,
    ConfigError,
    DataError,
    ExportError,
    ModelsError,
    TrainingError,
)
from models.evaluation import evaluate_split, split_evaluator
from models.heads import Classifier, blend
from models.metrics import evaluate_probs
from models.objective_registry import OBJECTIVES
from models.objectives import CorePrior, build_objective, core_probabilities
from models.pipeline import RunResult, finetune
from models.templates import TEMPLATE_SETS, resolve_templates
from models.train import Progress, TrainResult, train
from models.wiseft import CurvePoint, merge, select_alpha, sweep

__all__ = [
    "OBJECTIVES",
    "TEMPLATE_SETS",
    "Artifact",
    "ArtifactError",
    "Backbone",
    "BackboneConfig",
    "BackboneError",
    "Cancelled",
    "Classifier",
    "ConfigError",
    "CorePrior",
    "CurvePoint",
    "DataConfig",
    "DataError",
    "ExportError",
    "DatasetSplits",
    "HeadConfig",
    "ImageDataset",
    "ModelsError",
    "ObjectiveConfig",
    "Progress",
    "RunConfig",
    "RunResult",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "WiseConfig",
    "__version__",
    "blend",
    "build_objective",
    "check_descriptions",
    "core_probabilities",
    "create_backbone",
    "evaluate_probs",
    "evaluate_split",
    "finetune",
    "from_dict",
    "list_architectures",
    "load_artifact",
    "load_descriptions",
    "load_run_config",
    "merge",
    "open_dataset",
    "read_card",
    "resolve_device",
    "resolve_templates",
    "save_artifact",
    "select_alpha",
    "split_evaluator",
    "sweep",
    "to_dict",
    "train",
    "validate_splits",
]
