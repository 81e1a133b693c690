"""The registry's specs are the one source: capabilities, knobs, register and unregister."""

from __future__ import annotations

import pytest

from models.config import KNOBS, ObjectiveConfig, RunConfig, from_dict
from models.errors import ConfigError
from models.objective_registry import (
    OBJECTIVES,
    ObjectiveSpec,
    objective_spec,
    register_objective,
    unregister_objective,
)
from models.objectives import catalog


def test_every_knob_an_objective_reads_is_a_described_config_field() -> None:
    fields = set(ObjectiveConfig.__dataclass_fields__)
    assert set(KNOBS) <= fields
    for spec in OBJECTIVES.values():
        assert set(spec.knobs) <= set(KNOBS), spec.name


def test_the_catalog_carries_capabilities_and_knob_defaults() -> None:
    by_name = {o["name"]: o for o in catalog()}
    assert by_name["drm"]["needs_descriptions"] and by_name["drm"]["needs_prior"]
    assert not by_name["flyp"]["needs_descriptions"]
    lam = next(k for k in by_name["drm"]["knobs"] if k["name"] == "lam")
    assert lam == {
        "name": "lam",
        "type": "number",
        "default": ObjectiveConfig().lam,
        "choices": None,
        "minimum": 0.0,
        "exclusive_minimum": False,
        "description": KNOBS["lam"].help,
    }


def test_register_then_unregister_a_name() -> None:
    spec = ObjectiveSpec("toy-registry", "a toy", lambda *args: None, knobs=("lam",))
    register_objective(spec)
    try:
        assert objective_spec("toy-registry") is spec
        cfg = from_dict(RunConfig, {"objective": {"name": "toy-registry"}})
        assert cfg.objective.name == "toy-registry"
        with pytest.raises(ValueError, match="registered twice"):
            register_objective(spec)
    finally:
        unregister_objective("toy-registry")
    with pytest.raises(KeyError, match="unknown objective 'toy-registry'"):
        objective_spec("toy-registry")
    with pytest.raises(ConfigError, match="must be one of"):
        from_dict(RunConfig, {"objective": {"name": "toy-registry"}})
