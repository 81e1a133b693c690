"""Sizing an artifact from its config and safetensors headers, without building it (``sizing``).

The floor never exceeds what open_clip really builds; the meta-device state has open_clip's
own names and shapes and no storage; ``check_artifact`` refuses a config of billions of
parameters in milliseconds, and passes real artifacts, a Hugging Face text tower included.
"""

from __future__ import annotations

import hashlib
import json
import resource
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from models.artifacts import CARD, OPEN_CLIP_CONFIG, WEIGHTS, check_artifact, save_artifact
from models.backbone import register_builtin_configs
from models.errors import ArtifactError
from models.heads import Classifier
from models.sizing import (
    MAX_LAYERS,
    ArtifactTooLarge,
    config_floor,
    expected_state,
    read_header,
)


@pytest.mark.parametrize("arch", ["test-tiny-vit", "ViT-B-32", "ViT-L-14", "ViT-bigG-14"])
def test_the_floor_is_under_what_open_clip_builds_and_close_to_it(arch: str) -> None:
    register_builtin_configs()
    config = open_clip.get_model_config(arch)
    with torch.device("meta"):
        model = open_clip.create_model(arch, load_weights=False, device="meta")
    built = sum(t.numel() for t in model.state_dict().values())
    floor, layers = config_floor(config)
    assert 0.9 * built < floor <= built
    assert layers == config["vision_cfg"]["layers"] + config["text_cfg"]["layers"]


def test_the_meta_state_has_open_clips_names_and_shapes_and_no_storage(
    classifier: Classifier, tmp_path: Path
) -> None:
    folder = save_artifact(tmp_path / "a", classifier, {})
    state = expected_state(folder)
    real = classifier.clip.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        k: tuple(v.shape) for k, v in real.items()
    }
    assert all(t.device.type == "meta" for t in state.values())
    assert read_header(folder / WEIGHTS).keys() == real.keys()


def _relisted(folder: Path, change: dict[str, object]) -> None:
    config = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    config["model_cfg"]["vision_cfg"].update(change)
    (folder / OPEN_CLIP_CONFIG).write_text(json.dumps(config))
    card = json.loads((folder / CARD).read_text())
    card["files"][OPEN_CLIP_CONFIG] = hashlib.sha256(
        (folder / OPEN_CLIP_CONFIG).read_bytes()
    ).hexdigest()
    (folder / CARD).write_text(json.dumps(card))


def test_billions_of_parameters_are_refused_from_the_config_alone(
    classifier: Classifier, tmp_path: Path
) -> None:
    folder = save_artifact(tmp_path / "a", classifier, {})
    _relisted(folder, {"width": 8192, "layers": 24})  # about 19 billion
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ArtifactTooLarge, match="over the import limit of 500,000,000") as refused:
        check_artifact(folder)
    assert refused.value.parameters > 19_000_000_000 and refused.value.limit == 500_000_000
    # The process's peak memory did not move (ru_maxrss is in KiB on Linux).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_the_limit_is_the_callers(classifier: Classifier, tmp_path: Path) -> None:
    folder = save_artifact(tmp_path / "a", classifier, {})
    checked = check_artifact(folder)
    weights = read_header(folder / WEIGHTS)
    assert checked.parameters > sum(info.numel for info in weights.values())
    assert checked.weight_bytes > 4 * checked.parameters  # weights and heads, as float32
    with pytest.raises(ArtifactTooLarge, match="hold 3,38"):
        check_artifact(folder, max_params=checked.parameters - 1)


def test_more_blocks_than_the_weights_could_hold_are_refused_before_the_build(
    classifier: Classifier, tmp_path: Path
) -> None:
    folder = save_artifact(tmp_path / "a", classifier, {})
    # Width 1: within the weights' count, but each block costs the meta build time.
    _relisted(folder, {"width": 1, "head_width": 1, "layers": MAX_LAYERS + 44})
    with pytest.raises(ArtifactError, match=f"at most {MAX_LAYERS} blocks"):
        check_artifact(folder)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ((1 << 40).to_bytes(8, "little") + b"{}", "claims 1099511627776 bytes"),
        ((100).to_bytes(8, "little") + b"{}", "claims 100 bytes"),
        (b"\x02\x00", "claims"),
    ],
)
def test_a_hostile_header_is_refused_before_it_is_read(
    tmp_path: Path, header: bytes, message: str
) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(header)
    with pytest.raises(ArtifactError, match=message):
        read_header(path)


def test_a_header_claiming_more_data_than_the_file_has_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"w": torch.zeros(1000)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])  # the data cut short
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        read_header(path)


def test_a_timm_and_hugging_face_artifact_is_checked_unbuilt(tmp_path: Path) -> None:
    """The offline backbone's towers (a timm image tower, a BERT-style text tower carried as
    files in the artifact) pass, and a lie in the text tower's config.json is refused."""
    od = pytest.importorskip("robust_clip_offline.build")
    from models.backbone import Backbone, create_backbone
    from models.config import BackboneConfig
    from tests.models.test_offline import TINY, fake_sets

    built: Backbone = od.aligned_backbone(TINY, fake_sets(), progress=False)[0]
    od.write_model_folder(built, tmp_path / "m")
    backbone = create_backbone(BackboneConfig(arch=str(tmp_path / "m")))
    classifier = Classifier(backbone, ["a", "b"], ["a photo of a {c}."], {"a": ["x"], "b": ["y"]})
    folder = save_artifact(tmp_path / "a", classifier, {})
    checked = check_artifact(folder)
    assert checked.parameters == sum(t.numel() for t in classifier.state_dict().values())
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 200
    (folder / "config.json").write_text(json.dumps(config))
    card = json.loads((folder / CARD).read_text())
    card["files"]["config.json"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
    (folder / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="but the weights hold"):
        check_artifact(folder)
