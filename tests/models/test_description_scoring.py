"""models.description_scoring: candidates scored against the template baseline, a set proposed.

The rule is checked on hand-made embeddings whose geometry is known (a shape direction per
class, a "grass" direction only some images show), and the whole pass on the shapes dataset
with a real (tiny) backbone, reading its training images only.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.config import load_run_config
from models.description_scoring import (
    ScoringRule,
    check_candidates,
    score_candidates,
    score_dataset,
    template_candidates,
)
from models.errors import ConfigError

# Directions: 0 the horse's shape, 1 the zebra's shape, 2 grass.
VECTORS = {
    "a photo of a horse.": [1.0, 0.0, 0.0],
    "a photo of a zebra.": [0.2, 1.0, 0.0],
    "a horse, with a long face and a flowing mane": [1.0, 0.0, 0.1],
    "a horse standing on green grass": [0.0, 0.0, 1.0],
    "an animal": [1.0, 1.3, 0.0],
    "a zebra, striped": [0.2, 1.0, 0.05],
}


def encode(texts: Sequence[str]) -> torch.Tensor:
    return F.normalize(torch.tensor([VECTORS[t] for t in texts]), dim=-1)


def images() -> tuple[torch.Tensor, list[int], list[str]]:
    """Horses on grass (group a) and on sand (group b); zebras, which lean a little horse-ward."""
    rows = [[1, 0, 1]] * 4 + [[1, 0, 0]] * 4 + [[0.5, 1, 0]] * 8
    groups = ["a"] * 4 + ["b"] * 4 + ["a", "b"] * 4
    return F.normalize(torch.tensor(rows, dtype=torch.float), dim=-1), [0] * 8 + [1] * 8, groups


def score(**kwargs: object) -> dict:  # type: ignore[type-arg]
    features, labels, groups = images()
    pool = {
        "horse": [
            "a horse, with a long face and a flowing mane",
            "a horse standing on green grass",
            "an animal",
        ],
        "zebra": ["a zebra, striped"],
    }
    return score_candidates(
        features, labels, ["horse", "zebra"], pool, encode, groups=groups, **kwargs
    )


def test_the_background_and_the_generic_sentence_are_dropped_with_their_reasons() -> None:
    got = score()
    horse = got["per_class"]["horse"]
    by_text = {c["text"]: c for c in horse["candidates"]}
    good = by_text["a horse, with a long face and a flowing mane"]
    grass = by_text["a horse standing on green grass"]
    generic = by_text["an animal"]
    assert horse["baseline"]["top1"] == 1.0 and good["kept"] and good["top1"] == 1.0
    # Grass: right on the grass group only; the worst group and top-1 give it away.
    assert grass["group_top1"] == {"a": 1.0, "b": 0.0} and not grass["kept"]
    assert any("worst-group" in r for r in grass["reasons"])
    assert any("top-1 on its class" in r for r in grass["reasons"])
    # Generic: every horse, and the zebras too.
    assert generic["top1"] == 1.0 and generic["takes_other"] == 1.0 and not generic["kept"]
    assert any("accuracy" in r for r in generic["reasons"])
    assert got["proposed"] == {
        "horse": ["a horse, with a long face and a flowing mane"],
        "zebra": ["a zebra, striped"],
    }
    assert got["proposed_concept_top1"] == 1.0 and got["baseline_top1"] == 1.0
    assert got["weak_classes"] == [] and got["groups"] == 2 and got["candidates"] == 4


def test_a_pool_where_nothing_passes_keeps_its_best_and_flags_the_class() -> None:
    features, labels, groups = images()
    pool = {
        "horse": ["a horse standing on green grass", "an animal"],
        "zebra": ["a zebra, striped"],
    }
    got = score_candidates(features, labels, ["horse", "zebra"], pool, encode, groups=groups)
    horse = got["per_class"]["horse"]
    assert horse["weak"] and got["weak_classes"] == ["horse"] and len(horse["proposed"]) == 1
    assert horse["candidates"][0]["reasons"][0].startswith("kept as the best")


def test_the_cap_and_the_tolerances_are_the_rule_s() -> None:
    loose = ScoringRule(top1_tolerance=1, accuracy_tolerance=1, margin_tolerance=1,
                        group_tolerance=1, max_per_class=2)  # fmt: skip
    got = score(rule=loose)
    horse = got["per_class"]["horse"]
    assert len(horse["proposed"]) == 2
    capped = [c for c in horse["candidates"] if not c["kept"]]
    assert len(capped) == 1 and "2 better ones are kept" in capped[0]["reasons"][0]
    with pytest.raises(ConfigError, match="max_per_class"):
        ScoringRule(max_per_class=0)


def test_without_groups_evenness_is_not_measured() -> None:
    features, labels, _ = images()
    pool = {"horse": ["a horse standing on green grass"], "zebra": ["a zebra, striped"]}
    got = score_candidates(features, labels, ["horse", "zebra"], pool, encode)
    assert got["groups"] == 0
    assert "worst_group_top1" not in got["per_class"]["horse"]["candidates"][0]


def test_bad_pools_are_refused_naming_what_is_wrong() -> None:
    with pytest.raises(ConfigError, match="unknown class.*'cow'"):
        check_candidates(["horse"], {"horse": ["x"], "cow": ["y"]})
    with pytest.raises(ConfigError, match="no candidates for class.*'zebra'"):
        check_candidates(["horse", "zebra"], {"horse": ["x"], "zebra": []})
    with pytest.raises(ConfigError, match="empty text"):
        check_candidates(["horse"], {"horse": ["x", "  "]})
    assert check_candidates(["horse"], {"horse": [" x ", "x", "y"]}) == {"horse": ["x", "y"]}


def test_template_candidates_name_the_class() -> None:
    made = template_candidates(["red fox"])
    assert made["red fox"] and all("red fox" in t for t in made["red fox"])


def _training_only(shapes_root: Path, tmp_path: Path) -> Path:
    """The shapes dataset with every image outside ``train`` replaced by bytes no decoder reads."""
    root = Path(shutil.copytree(shapes_root, tmp_path / "set"))
    for split in root.iterdir():
        if split.is_dir() and split.name != "train":
            for image in split.rglob("*.png"):
                image.write_bytes(b"not an image")
    return root


def test_score_dataset_reads_the_training_images_only(shapes_root: Path, tmp_path: Path) -> None:
    root = _training_only(shapes_root, tmp_path)
    cfg = load_run_config(None, [f"data.path={root}", "head.templates=single"])
    classes = ["circle", "cross", "square", "triangle"]
    pool = template_candidates(classes)
    pool["circle"].append("a blue background")
    got = score_dataset(cfg, pool)
    assert got["split"] == "train" and got["images"] == 8 * 4
    assert set(got["proposed"]) == set(classes) and all(got["proposed"].values())
    assert got["candidates"] == sum(len(v) for v in pool.values())
    assert {"images", "texts", "scoring"} <= set(got["seconds"])
    # Splits it must not read: refused by name.
    for split in ("val", "test", "ood_test"):
        held = load_run_config(None, [f"data.path={root}", f"data.train_split={split}"])
        with pytest.raises(ConfigError, match="training images only"):
            score_dataset(held, pool)


def test_the_cli_proposes_what_the_library_scores(
    shapes_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from models.cli import main

    pool = tmp_path / "pool.json"
    pool.write_text(json.dumps({"circle": ["a round shape", "a blue background"]}))
    common = ["--set", f"data.path={shapes_root}", "--candidates", str(pool), "--templates"]
    out = tmp_path / "proposed.json"
    assert (
        main(["descriptions", "propose", *common, "--rule", "max_per_class=2", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    cfg = load_run_config(None, [f"data.path={shapes_root}"])
    merged = template_candidates(["circle", "cross", "square", "triangle"])
    merged["circle"] = ["a round shape", "a blue background", *merged["circle"]]
    expected = score_dataset(cfg, merged, rule=ScoringRule(max_per_class=2))
    assert json.loads(out.read_text()) == expected["proposed"]
    assert "proposed descriptions:" in printed and "dropped" in printed
    assert main(["descriptions", "score", *common, "--json"]) == 0
    assert (
        json.loads(capsys.readouterr().out)["per_class"] == score_dataset(cfg, merged)["per_class"]
    )
    # User mistakes: one line, exit code 2.
    assert main(["descriptions", "score", "--set", f"data.path={shapes_root}"]) == 2
    assert "nothing to score" in capsys.readouterr().err
    assert main(["descriptions", "score", *common, "--rule", "nope=1"]) == 2
    assert "--rule 'nope=1'" in capsys.readouterr().err


def test_a_class_whose_baseline_fails_is_flagged_by_the_proposal_s_own_head() -> None:
    # Zebras that look exactly like horses on sand: the zebra's baseline gets none of them, so
    # its candidate passes the relative rule; the proposal's own diagnostics flag the class.
    horses = [[1.0, 0.0, 1.0]] * 4 + [[1.0, 0.0, 0.0]] * 4
    features = F.normalize(torch.tensor(horses + [[1.0, 0.0, 0.0]] * 8), dim=-1)
    pool = {
        "horse": ["a horse, with a long face and a flowing mane"],
        "zebra": ["a zebra, striped"],
    }
    got = score_candidates(features, [0] * 8 + [1] * 8, ["horse", "zebra"], pool, encode)
    zebra = got["per_class"]["zebra"]
    assert zebra["candidates"][0]["kept"] and zebra["candidates"][0]["reasons"] == []
    assert zebra["weak"] and got["weak_classes"] == ["zebra"]
    assert zebra["note"].startswith("the proposed set's concept head gets 0% of its images")
