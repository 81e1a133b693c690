from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from models.artifacts import CARD, HEADS, WEIGHTS, load_artifact, save_artifact
from models.backbone import create_backbone, skipped_random_init
from models.config import BackboneConfig
from models.errors import ArtifactError
from models.heads import Classifier


def test_round_trip_gives_identical_logits(classifier: Classifier, tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", classifier, {"note": "test"})
    loaded = load_artifact(tmp_path / "a", verify=True)
    images = torch.randn(4, 3, 32, 32)
    classifier.eval()
    for head in ("default", "concept", "dual"):
        assert torch.equal(classifier(images, head=head), loaded.classifier(images, head=head))
    assert loaded.card["note"] == "test"
    assert loaded.card["classnames"] == list(classifier.classnames)
    assert loaded.classifier.descriptions == classifier.descriptions
    assert loaded.classifier.beta == classifier.beta


def test_artifact_folder_is_an_open_clip_local_dir(classifier: Classifier, tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", classifier, {})
    # Our artifacts are valid base models: the backbone factory opens the folder directly.
    backbone = create_backbone(BackboneConfig(arch=str(tmp_path / "a")))
    for key, value in classifier.clip.state_dict().items():
        assert torch.equal(value, backbone.model.state_dict()[key]), key


def test_nothing_is_pickled(classifier: Classifier, tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", classifier, {})
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert all(n.endswith((".json", ".safetensors")) for n in names), names


def test_overwrite_is_atomic_and_leaves_no_temporaries(
    classifier: Classifier, tmp_path: Path
) -> None:
    save_artifact(tmp_path / "a", classifier, {"v": 1})
    save_artifact(tmp_path / "a", classifier, {"v": 2})
    assert json.loads((tmp_path / "a" / CARD).read_text())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(ArtifactError, match="exists"):
        save_artifact(tmp_path / "a", classifier, {}, overwrite=False)


def test_failed_write_keeps_the_previous_artifact(classifier: Classifier, tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", classifier, {"v": 1})
    with pytest.raises(TypeError):
        save_artifact(tmp_path / "a", classifier, {"v": object()})
    assert json.loads((tmp_path / "a" / CARD).read_text())["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_corrupt_or_missing_files_are_named(classifier: Classifier, tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", classifier, {})
    (tmp_path / "a" / HEADS).unlink()
    with pytest.raises(ArtifactError, match="heads.safetensors is missing"):
        load_artifact(tmp_path / "a")
    save_artifact(tmp_path / "b", classifier, {})
    (tmp_path / "b" / WEIGHTS).write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ArtifactError, match="open_clip_model.safetensors"):
        load_artifact(tmp_path / "b")
    with pytest.raises(ArtifactError, match="not an artifact"):
        load_artifact(tmp_path)


def test_checksum_mismatch_is_detected(classifier: Classifier, tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", classifier, {})
    card = json.loads((tmp_path / "a" / CARD).read_text())
    card["files"][WEIGHTS] = "0" * 64
    (tmp_path / "a" / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="checksum"):
        load_artifact(tmp_path / "a", verify=True)


def test_skipped_random_init_is_scoped_to_its_thread_and_block() -> None:
    """Loading skips random fills (the strict load overwrites them); nothing else may."""
    seen: dict[str, bool] = {}
    inside = threading.Event()
    done = threading.Event()

    def other_thread() -> None:
        inside.wait(5)
        seen["other thread filled"] = bool(torch.nn.init.normal_(torch.zeros(64)).any())
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with skipped_random_init():
        kept = torch.nn.init.kaiming_uniform_(torch.zeros(8, 8))
        inside.set()
        done.wait(5)
        seen["skipped here"] = not kept.any()
    worker.join()
    seen["filled after"] = bool(torch.nn.init.uniform_(torch.zeros(64)).any())
    assert seen == {"other thread filled": True, "skipped here": True, "filled after": True}
