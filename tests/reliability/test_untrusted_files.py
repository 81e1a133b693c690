"""A pickle posing as a checkpoint is never executed: weights are safetensors, and every
``torch.load`` passes ``weights_only=True``."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models.artifacts import load_artifact
from models.backbone import create_backbone
from models.config import BackboneConfig
from models.errors import ArtifactError, BackboneError
from models.train import load_checkpoint
from robust_clip_offline.assemble import load_image_tower
from tests.conftest import make_classifier
from tests.reliability.conftest import record

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this creates ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.makedirs, (str(self.marker),))


def evil(path: Path, marker: Path) -> Path:
    # A torch-style checkpoint (a zip with data.pkl), and the payload inside a state dict.
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload(marker)}, path)
    return path


def test_a_pickled_artifact_weight_file_is_refused_unexecuted(
    tmp_path: Path, reliability_artifact: Path
) -> None:
    marker = tmp_path / "pwned"
    poisoned = tmp_path / "artifact"
    shutil.copytree(reliability_artifact, poisoned)
    for name in ("open_clip_model.safetensors", "heads.safetensors"):
        evil(poisoned / name, marker)
        with pytest.raises(ArtifactError, match="not a readable safetensors file"):
            load_artifact(poisoned)
        raw = poisoned / name
        raw.write_bytes(pickle.dumps(Payload(marker)))
        with pytest.raises(ArtifactError):
            load_artifact(poisoned)
        shutil.copy(reliability_artifact / name, poisoned / name)
    assert not marker.exists()


def test_a_pickled_trainer_state_is_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    classifier = make_classifier()
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    state = {k: v.contiguous() for k, v in classifier.state_dict().items()}
    save_file(state, str(checkpoint / "model.safetensors"))
    evil(checkpoint / "trainer.pt", marker)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_checkpoint(checkpoint, classifier)
    assert not marker.exists()


def test_a_pickled_pretrained_file_is_refused_unexecuted(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name in ("weights.pt", "weights.bin", "weights.pth"):
        path = evil(tmp_path / name, marker)
        with pytest.raises(BackboneError):
            create_backbone(BackboneConfig(arch="test-tiny-vit", pretrained=str(path)))
    with pytest.raises(pickle.UnpicklingError):
        load_image_tower(torch.nn.Linear(1, 1), evil(tmp_path / "tower.pth", marker))
    assert not marker.exists()


def calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def test_every_torch_load_passes_weights_only_and_nothing_unpickles_freely() -> None:
    dirs = ("models", "service", "worker", "offline/robust_clip_offline")
    sources = [p for d in dirs for p in (ROOT / d).rglob("*.py")]
    loads, unsafe = 0, []
    for path in sources:
        for call in calls(ast.parse(path.read_text(), str(path))):
            name = dotted(call.func)
            where = f"{path.relative_to(ROOT)}:{call.lineno} {name}"
            keywords = {k.arg: k.value for k in call.keywords}
            if name == "torch.load":
                loads += 1
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(where)
            elif name in ("pickle.load", "pickle.loads", "torch.jit.load", "joblib.load"):
                unsafe.append(where)
            elif name.endswith("np.load") or name.endswith("numpy.load"):
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and not flag.value):
                    unsafe.append(where)
    assert unsafe == []
    assert loads >= 2  # the scan does see the calls it checks
    record("pickle_checkpoints", torch_load_calls=loads, unsafe_calls=0, payloads_executed=0)
