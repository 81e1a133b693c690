"""What a benchmark run is: the methods and their settings, the plan, and one run's config.

``run`` executes plans and ``diagnose`` measures p_c on a plan's tasks; both build their
configurations here, so neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.config import RunConfig, from_dict
from robust_clip_offline.tasks import Sizes, Task

# The fine-tuning methods and the objective settings that define them.
METHODS: dict[str, dict[str, Any]] = {
    "ce": {"name": "ce"},
    "flyp": {"name": "flyp"},
    "flyp-paper": {"name": "flyp"},
    "drm-weight": {"name": "drm", "wrm": "weight"},
    "drm-soft": {"name": "drm", "wrm": "soft"},
    # The control of issue 24: soft with the frozen *default* head as p_c's source, i.e.
    # distillation towards zero-shot; its WRM prompts are still the concept descriptions.
    "drm-soft-default": {"name": "drm", "wrm": "soft", "pc_head": "default"},
}
# A method run at another method's tuned values (its control is only fair at the same lr and
# lambda): hparams.json is read under this name.
TUNED_AS: dict[str, str] = {"drm-soft-default": "drm-soft"}
# Settings of a method that are not tuned but are part of what a run depends on (and so of its
# journal key): p_c's normalisation for DRM, FLYP as released (objective.preset) for flyp-paper.
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "flyp-paper": {"preset": "flyp-paper"},
    "drm-weight": {"pc_norm": "prob"},
    "drm-soft": {"pc_norm": "prob"},
    "drm-soft-default": {"pc_norm": "prob"},
}
# hparams keys that go into the objective rather than the training loop.
OBJECTIVE_KEYS = ("lam", "pc_mode", "pc_norm", "preset")
LAMBDA_GRID = (0.5, 1.0, 2.0, 5.0, 10.0)
# Analysis variants (--ablate): a method above with some of its settings changed. They are
# never part of the main comparison, and their OOD figures choose nothing.
ABLATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "drm-weight-affinity": ("drm-weight", {"pc_norm": "affinity"}),
    "drm-soft-affinity": ("drm-soft", {"pc_norm": "affinity"}),
    **{f"drm-weight-lam{lam:g}": ("drm-weight", {"lam": lam}) for lam in LAMBDA_GRID},
    **{f"drm-soft-lam{lam:g}": ("drm-soft", {"lam": lam}) for lam in LAMBDA_GRID},
    "drm-weight-per-step": ("drm-weight", {"pc_mode": "per_step"}),
}
HEADS = ("default", "concept", "dual")
FULL_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
QUICK_ALPHAS = (0.0, 0.5, 1.0)
# --fine-alphas: 0.05 steps (evaluation passes only; FULL_ALPHAS lie on it, so a study can read
# both grids from one run).
FINE_ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))
HPARAMS_FILE = Path(__file__).with_name("hparams.json")
# Used where hparams.json has no tuned entry for a (backbone, task, method).
DEFAULT_HPARAMS: dict[str, Any] = {
    "lr": 3e-5,
    "lam": 1.0,
    "epochs": 2,
    "batch_size": 64,
    "weight_decay": 0.1,
    "warmup_steps": 10,
}
QUICK_EPOCHS = 1
# --long: fine-tuning run to (near) convergence instead of 2 epochs (24 steps).
LONG_EPOCHS = 10


@dataclass(frozen=True)
class Plan:
    tasks: tuple[Task, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    sizes: Sizes
    alphas: tuple[float, ...]
    arch: str
    pretrained: str | None
    device: str
    quick: bool
    out: Path
    data_root: Path
    hparams: dict[str, Any] = field(default_factory=dict)
    zeroshot: bool = True  # evaluate the zero-shot model too (once per task)
    epochs: int | None = None  # overrides the tuned epochs (--long)
    # --descriptions: {task: {class: [sentences]}} in place of each task's hand-written set,
    # and the file they came from; runs then also keep per-image hits (bench.shift.descriptions).
    descriptions: dict[str, dict[str, list[str]]] | None = None
    descriptions_file: Path | None = None
    per_image: bool = False


def base_method(method: str) -> str:
    """The method an ablation variant changes (a main method is its own base)."""
    return ABLATIONS[method][0] if method in ABLATIONS else method


def backbone_key(arch: str, pretrained: str | None) -> str:
    return arch if pretrained is None else f"{arch}:{pretrained}"


def backbone_digest(arch: str) -> str | None:
    """The weights a local backbone folder holds (the offline backbone's cache, or a path), as a
    short SHA-256 over its weight files; None for a named architecture. The offline backbone is
    rebuilt on each machine, and a rebuild need not give the same weights: runs of two builds
    must not be compared as if they were paired."""
    from models.backbone import DEFAULT_BACKBONE_CACHE, OFFLINE_BACKBONE, WEIGHT_SUFFIXES

    folder = DEFAULT_BACKBONE_CACHE / arch if arch == OFFLINE_BACKBONE else Path(arch)
    if not folder.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def load_hparams(path: Path = HPARAMS_FILE) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def hparams_for(plan: Plan, task: str, method: str) -> dict[str, Any]:
    """Tuned values for (backbone, task, method) over the defaults; quick mode trains less.

    An ablation variant starts from its base method's values and changes its own.
    """
    tuned = plan.hparams.get(backbone_key(plan.arch, plan.pretrained), {}).get(task, {})
    base = base_method(method)
    values = {
        **DEFAULT_HPARAMS,
        **METHOD_SETTINGS.get(base, {}),
        **tuned.get(TUNED_AS.get(base, base), {}),
    }
    values.update(ABLATIONS[method][1] if method in ABLATIONS else {})
    if plan.epochs is not None:
        values["epochs"] = plan.epochs
    if plan.quick:
        values["epochs"] = QUICK_EPOCHS
    return values


def run_config(
    plan: Plan,
    task: Task,
    manifest: Path,
    method: str,
    seed: int,
    output_dir: Path,
    hparams: Mapping[str, Any],
    alphas: Sequence[float] | None = None,
    ood: bool = True,
    descriptions: Path | None = None,
) -> RunConfig:
    """``descriptions``: a set in place of the task's own ``descriptions.json``."""
    objective = {"name": "zeroshot"} if method == "zeroshot" else dict(METHODS[base_method(method)])
    if method != "zeroshot":
        keys = OBJECTIVE_KEYS if objective["name"] == "drm" else ("preset",)
        objective.update({k: hparams[k] for k in keys if k in hparams})
    return from_dict(
        RunConfig,
        {
            "backbone": {"arch": plan.arch, "pretrained": plan.pretrained},
            "objective": objective,
            "data": {
                "path": str(manifest),
                "descriptions": str(descriptions or manifest.with_name("descriptions.json")),
                "ood_splits": list(task.ood_splits) if ood else [],
                # The images were just written by us; decoding all of them again is wasted time.
                "check_images": False,
                # bench/shift/diagnose.py measures p_c per group; the runs need no second pass.
                # DRM's runs keep the diagnostics (one pass over the training images, both
                # heads: the concept head against the default head, per group).
                "diagnose_descriptions": objective["name"] == "drm"
                and objective.get("pc_mode", "cached") == "cached"
                and objective.get("pc_head", "concept") == "concept",
            },
            "train": {
                "epochs": hparams["epochs"],
                "batch_size": hparams["batch_size"],
                "lr": hparams["lr"],
                "weight_decay": hparams["weight_decay"],
                "warmup_steps": hparams["warmup_steps"],
                "seed": seed,
                "device": plan.device,
            },
            # The report applies both rules (tolerance, best_id_val) to the stored curve.
            "wise": {"alphas": list(alphas or plan.alphas), "selection": "tolerance"},
            "output_dir": str(output_dir),
        },
    )
