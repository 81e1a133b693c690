from __future__ import annotations

from pathlib import Path

import pytest

from models.config import (
    RunConfig,
    WiseConfig,
    from_dict,
    load_run_config,
    to_dict,
    with_overrides,
)
from models.errors import ConfigError


def test_defaults_round_trip_through_dicts() -> None:
    cfg = RunConfig()
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.001\nobjective:\n  name: flyp\n")
    cfg = load_run_config(
        str(path), ["train.lr=2e-5", "wise.alphas=[0, 0.5, 1]", "objective.lam=2"]
    )
    assert cfg.train.lr == 2e-5 and cfg.objective.name == "flyp"
    assert cfg.wise.alphas == (0.0, 0.5, 1.0) and cfg.objective.lam == 2.0


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["objective.name=sgd"], "objective.name"),
        (["objective.wrm=hard"], "objective.wrm"),
        (["train.lr=-1"], "train.lr"),
        (["train.batch_size=1"], "train.batch_size"),
        (["train.lr=fast"], "train.lr"),
        (["head.beta=2"], "head.beta"),
        (["wise.alphas=[0.5, 1.5]"], "wise.alphas"),
        (["train.learning_rate=1"], "train"),
        (["head.templates=['no slot']"], "head.templates"),
        (["train.seed=-1"], "train.seed"),
        (["train.seed=9223372036854775808"], "train.seed"),
        (["objective.pc_norm=rank"], "objective.pc_norm"),
        (["objective.pc_temperature=0"], "objective.pc_temperature"),
        (["objective.preset=flyp-2023"], "objective.preset"),
        (["train.weight_decay_on=some"], "train.weight_decay_on"),
        (["wise.selection=best_ood"], "wise.selection"),
        (["wise.tol=-0.1"], "wise.tol"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config(None, overrides)
    assert info.value.key is not None and info.value.key.startswith(key)
    assert key in str(info.value)


def test_override_without_equals_is_refused() -> None:
    with pytest.raises(ConfigError, match="key=value"):
        with_overrides({}, ["train.lr"])


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_run_config(str(tmp_path / "nope.yaml"))


def test_p_c_defaults_to_probabilities_with_the_frozen_scale() -> None:
    cfg = RunConfig()
    assert cfg.objective.pc_norm == "prob" and cfg.objective.pc_temperature == 1.0


def test_flyp_paper_preset_fills_the_released_settings() -> None:
    cfg = load_run_config(None, ["objective.name=flyp", "objective.preset=flyp-paper"])
    assert cfg.objective.mask_same_class is False
    assert cfg.train.grad_clip is None and cfg.train.weight_decay_on == "all"
    plain = load_run_config(None, ["objective.name=flyp"])
    assert plain.objective.mask_same_class is True
    assert plain.train.grad_clip == 1.0 and plain.train.weight_decay_on == "matrices"


def test_a_preset_fixes_its_keys_even_when_defaults_are_spelled_out() -> None:
    # An API payload carries every objective key, defaults included (mask_same_class: true).
    spelled = {**to_dict(RunConfig()), "objective": {**to_dict(RunConfig())["objective"]}}
    spelled["objective"]["preset"] = "flyp-paper"
    cfg = from_dict(RunConfig, spelled)
    assert cfg.objective.mask_same_class is False and cfg.train.grad_clip is None
    # The resolved config (as written beside a run's outputs) reads back to the same run.
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_wise_selection_defaults_to_alpha_half_on_the_default_head() -> None:
    # The reading chosen by bench/shift/results/2026-12-07-issue24/rules (issue 24).
    cfg = RunConfig()
    assert cfg.wise.selection == "fixed" and cfg.wise.fixed_alpha == 0.5
    assert cfg.wise.heads == ("default",) and cfg.wise.tol is None
    # The served alpha is always on the curve (the card reports its metrics).
    assert WiseConfig(alphas=(0.0, 1.0)).alphas == (0.0, 0.5, 1.0)
    assert WiseConfig(alphas=(0.0, 1.0), selection="best_id_val").alphas == (0.0, 1.0)
