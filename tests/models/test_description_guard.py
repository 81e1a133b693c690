"""The pre-training guard: a run whose descriptions leave the frozen concept head near chance.

Every class is given the same description, so the concept head's rows are identical and it
takes every image for the first class: 25% on four classes, below twice chance, three classes
weak, whatever the weights. The backbone is the tiny architecture with its weights read from a
file, so it counts as pretrained (random weights are not judged).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.backbone import create_backbone
from models.config import BackboneConfig, load_run_config
from models.diagnostics import description_diagnostics, near_chance
from models.errors import WeakDescriptionsError
from models.pipeline import finetune

CLASSES = ["circle", "cross", "square", "triangle"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    source = create_backbone(BackboneConfig(arch="test-tiny-vit"))
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    return path


def _config(root: Path, tmp_path: Path, weights: Path | None, *extra: str):  # type: ignore[no-untyped-def]
    tmp_path.mkdir(parents=True, exist_ok=True)
    same = tmp_path / "same.json"
    same.write_text(json.dumps({c: ["a shape"] for c in CLASSES}))
    return load_run_config(
        None,
        [
            f"data.path={root}",
            f"data.descriptions={same}",
            "train.max_steps=1",
            "train.batch_size=8",
            "wise.alphas=[0, 1]",
            f"output_dir={tmp_path / 'out'}",
            *([f"backbone.pretrained={weights}"] if weights else []),
            *extra,
        ],
    )


def test_near_chance_is_twice_chance_overall_or_most_classes_weak() -> None:
    labels = [0, 1, 2, 3] * 2
    everything_first = torch.zeros(8, 4)
    everything_first[:, 0] = 1
    assert near_chance(description_diagnostics(everything_first, labels, CLASSES))
    right = torch.eye(4).repeat(2, 1)
    assert not near_chance(description_diagnostics(right, labels, CLASSES))


def test_a_drm_run_fails_before_training_naming_the_weak_classes_and_the_fix(
    shapes_root: Path, tmp_path: Path, weights: Path
) -> None:
    said: list[str] = []
    with pytest.raises(WeakDescriptionsError) as caught:
        finetune(_config(shapes_root, tmp_path, weights), note=said.append)
    message = str(caught.value)
    assert message.startswith("data.descriptions: the frozen concept head is near chance")
    assert "3 of 4 classes weak" in message and "'square'" in message
    for fix in ("name the class", "POST /descriptions/score", "allow_weak_descriptions"):
        assert fix in message
    # It failed before the zero-shot evaluation and before any step: nothing was written.
    assert not any(line.startswith("zero-shot") for line in said)
    assert not (tmp_path / "out").exists()


def test_allowed_explicitly_a_drm_run_trains_and_carries_the_warning(
    shapes_root: Path, tmp_path: Path, weights: Path
) -> None:
    said: list[str] = []
    cfg = _config(shapes_root, tmp_path, weights, "data.allow_weak_descriptions=true")
    card = finetune(cfg, note=said.append).card
    warning = card["description_diagnostics"]["warning"]
    assert warning.startswith("WARNING: the frozen concept head is near chance")
    assert warning in said and card["training"]["steps"] == 1


def test_a_flyp_run_serving_the_dual_head_is_warned_not_stopped(
    shapes_root: Path, tmp_path: Path, weights: Path
) -> None:
    said: list[str] = []
    card = finetune(
        _config(shapes_root, tmp_path, weights, "objective.name=flyp"), note=said.append
    ).card
    assert "near chance" in card["description_diagnostics"]["warning"]
    # Serving the default head only (beta 1): the concept head is not used, nothing to say.
    only_default = _config(
        shapes_root, tmp_path / "b", weights, "objective.name=flyp", "head.beta=1"
    )
    card = finetune(only_default).card
    assert "warning" not in card["description_diagnostics"]


def test_random_weights_are_not_judged(shapes_root: Path, tmp_path: Path) -> None:
    card = finetune(_config(shapes_root, tmp_path, None)).card
    assert "warning" not in card["description_diagnostics"]


def test_a_failed_job_records_its_own_code() -> None:
    from service.errors import error_code

    assert error_code(WeakDescriptionsError("near chance", "data.descriptions")) == (
        "weak_descriptions"
    )
