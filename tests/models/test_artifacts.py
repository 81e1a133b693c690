from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from models.artifacts import (
    CARD,
    FINETUNED,
    HEADS,
    OPEN_CLIP_CONFIG,
    WEIGHTS,
    ZEROSHOT,
    check_artifact,
    load_artifact,
    merge_artifact,
    save_artifact,
)
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


def _two_ended(classifier: Classifier, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    zeroshot = {k: v.clone() for k, v in classifier.state_dict().items()}
    finetuned = {k: v + 0.1 if v.is_floating_point() else v for k, v in zeroshot.items()}
    card = {"wise": {"selected_alpha": 0.0, "curve": [{"alpha": 0.0, "metrics": {}}]}}
    save_artifact(folder, classifier, card, finetuned, zeroshot_state=zeroshot)
    return zeroshot, finetuned


def test_both_ends_and_the_config_are_listed(classifier: Classifier, tmp_path: Path) -> None:
    _two_ended(classifier, tmp_path / "a")
    files = json.loads((tmp_path / "a" / CARD).read_text())["files"]
    assert {OPEN_CLIP_CONFIG, WEIGHTS, HEADS, FINETUNED, ZEROSHOT} <= set(files)
    assert check_artifact(tmp_path / "a").card["files"] == files


def test_merge_artifact_gives_the_ends_exactly(classifier: Classifier, tmp_path: Path) -> None:
    zeroshot, finetuned = _two_ended(classifier, tmp_path / "a")
    for alpha, end in ((0.0, zeroshot), (1.0, finetuned)):
        merge_artifact(tmp_path / "a", alpha, tmp_path / f"m{alpha}", card={"source": "t"})
        merged = load_artifact(tmp_path / f"m{alpha}", verify=True)
        state = merged.classifier.state_dict()
        assert all(torch.equal(state[k], end[k]) for k in end if k.startswith("clip."))
        assert merged.card["wise"]["selected_alpha"] == alpha
        assert merged.card["wise"]["selection"] == "manual" and merged.card["source"] == "t"


def test_merge_artifact_needs_both_ends(classifier: Classifier, tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", classifier, {})
    with pytest.raises(ArtifactError, match="no fine-tuned end"):
        merge_artifact(tmp_path / "a", 0.5, tmp_path / "b")
    save_artifact(tmp_path / "c", classifier, {}, classifier.state_dict())
    with pytest.raises(ArtifactError, match="without its zero-shot end"):
        merge_artifact(tmp_path / "c", 0.5, tmp_path / "d")


def test_check_artifact_refuses_pickles_and_unlisted_files(
    classifier: Classifier, tmp_path: Path
) -> None:
    save_artifact(tmp_path / "a", classifier, {})
    (tmp_path / "a" / "extra.pt").write_bytes(pickle.dumps([1]))
    with pytest.raises(ArtifactError, match="extra.pt is a pickled file"):
        check_artifact(tmp_path / "a")
    (tmp_path / "a" / "extra.pt").unlink()
    (tmp_path / "a" / "notes.json").write_text("{}")
    with pytest.raises(ArtifactError, match="unexpected file notes.json"):
        check_artifact(tmp_path / "a")
