from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from models.objective_registry import objective_names


def known_objective(name: str) -> str:
    """``name`` when an objective is registered under it; a ValueError (a 422) naming the
    known ones otherwise. Read at request time: objectives registered later are accepted."""
    if name not in objective_names():
        raise ValueError(f"unknown objective {name!r}; known: {list(objective_names())}")
    return name


class KnobObject(BaseModel):
    """One ``method.objective`` setting the objective reads."""

    name: str
    type: Literal["choice", "number", "boolean", "string"]
    default: Any
    choices: list[str] | None
    minimum: float | None
    exclusive_minimum: bool
    description: str


class ObjectiveObject(BaseModel):
    object: Literal["objective"] = "objective"
    name: str  # what ``method.type`` takes
    label: str
    description: str
    trains: bool  # False: the zero-shot model is evaluated and registered, nothing is trained
    needs_descriptions: bool  # a job without class descriptions is refused
    needs_prior: bool  # uses the frozen pre-trained model's core prior p_c
    learned_head: bool  # trains a linear head initialised from zero-shot
    trains_text: bool  # False: the text tower stays frozen
    knobs: list[KnobObject]


class ObjectiveList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ObjectiveObject]
    default: str  # the objective a job gets when ``method.type`` is left out
