"""The objectives by name, in one table (timm's register/create pattern): names are data.

``models.objectives`` registers each objective's builder with the line that describes it; config
validation, ``python -m models list`` and ``build_objective`` all read this table. It imports
nothing of the core, so ``models.config`` can read the names without importing torch code
(``models/__init__`` imports ``models.objectives``, so the table is full before any config
is built).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Builder = TypeVar("Builder", bound=Callable[..., Any])


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its name, one line for ``list``, and how to build it."""

    name: str
    description: str
    build: Callable[..., Any]


# Insertion order is the order ``list`` prints and config errors name.
OBJECTIVES: dict[str, ObjectiveSpec] = {}


def register_objective(name: str, description: str) -> Callable[[Builder], Builder]:
    """Decorator: add ``build`` to the table under ``name``."""

    def add(build: Builder) -> Builder:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        OBJECTIVES[name] = ObjectiveSpec(name, description, build)
        return build

    return add


def objective_names() -> tuple[str, ...]:
    return tuple(OBJECTIVES)
