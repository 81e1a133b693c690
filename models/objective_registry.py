"""The objectives by name, in one table (timm's register/create pattern): names are data.

Each ``ObjectiveSpec`` says what its objective needs and which ``ObjectiveConfig`` knobs it
reads; the pipeline, the service's validation, ``GET /objectives``, the dashboard's form and
``python -m models list`` read these fields instead of branching on names. ``models.objectives``
registers the built-in ones; anything may add its own with ``register_objective(spec)`` (see
docs/objectives.md). This module imports nothing of the core, so ``models.config`` can read the
names without importing torch code (``models/__init__`` imports ``models.objectives``, so the
table is full before any config is built).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its name, what it needs, its knobs, and how to build it.

    ``build(classifier, cfg, seed, prior)`` returns the objective (``models.objectives.Objective``);
    ``prior`` is the frozen model's ``CorePrior`` when ``needs_prior``, else None.
    """

    name: str
    description: str  # one line, for ``list`` and ``GET /objectives``
    build: Callable[..., Any]
    label: str = ""  # a short title for forms; the name when empty
    trains: bool = True  # False: no training, the pipeline evaluates the zero-shot heads
    needs_descriptions: bool = False  # refuse a run without class descriptions
    needs_prior: bool = False  # p_c from the frozen pre-trained model (CorePrior)
    learned_head: bool = False  # a trainable linear head, initialised from zero-shot
    trains_text: bool = True  # False freezes the text tower (its gradients are never used)
    knobs: tuple[str, ...] = ()  # the ObjectiveConfig fields it reads (models.config.KNOBS)

    @property
    def title(self) -> str:
        return self.label or self.name


# What a run config or a job without an objective name gets.
DEFAULT_OBJECTIVE = "drm"

# Insertion order is the order ``list`` prints, config errors name and forms offer.
OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    """Add ``spec`` to the table; a name may be registered once."""
    if spec.name in OBJECTIVES:
        raise ValueError(f"objective {spec.name!r} is registered twice")
    OBJECTIVES[spec.name] = spec
    return spec


def unregister_objective(name: str) -> None:
    """Remove ``name`` from the table (tests register toy objectives and take them back)."""
    OBJECTIVES.pop(name, None)


def objective_names() -> tuple[str, ...]:
    return tuple(OBJECTIVES)


def objective_spec(name: str) -> ObjectiveSpec:
    """The spec registered as ``name``; a KeyError naming the known ones otherwise."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; known: {list(OBJECTIVES)}") from None
