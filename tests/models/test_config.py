from __future__ import annotations

from pathlib import Path

import pytest

from models.config import RunConfig, from_dict, load_run_config, to_dict, with_overrides
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
