"""The description sets the robustness runs use, checked before any run: every class of every
task, 3 to 6 sentences each naming the class and no colour or background, and the product's
acceptance rule (bench/shift/accept.py) on the training images."""

from __future__ import annotations

import json
from pathlib import Path

from bench.shift import accept
from bench.shift import descriptions as sets
from robust_clip_offline.tasks import SPURIOUS_COLOURS, TASKS

ROOT = Path(__file__).resolve().parents[2]
V2 = ROOT / "bench/shift/descriptions/v2.json"
ACCEPTED = ROOT / "bench/results/descriptions-v2-2026-12-07/accept.json"


def test_the_v2_sets_name_each_class_and_its_shape_never_a_colour() -> None:
    loaded = sets.load_sets(V2, {t: list(task.descriptions) for t, task in TASKS.items()})
    banned = {*SPURIOUS_COLOURS, "background", "colour", "color", "white", "black"}
    for task, classes in loaded.items():
        for name, texts in classes.items():
            assert 3 <= len(texts) <= 6, (task, name)
            for text in texts:
                assert name.split()[0] in text, (task, name, text)  # "digit", "ankle", ...
                assert not banned & set(text.replace(",", " ").replace(".", " ").split()), text


def test_the_committed_acceptance_is_of_this_set_and_accepts_it() -> None:
    loaded = sets.load_sets(V2, {t: list(task.descriptions) for t, task in TASKS.items()})
    rows = json.loads(ACCEPTED.read_text())
    assert {r["task"] for r in rows} == set(TASKS)
    for row in rows:
        assert row["set_digest"] == sets.set_digest(loaded[row["task"]]), row["task"]
        assert row["images"] == 800 and row["set"]["accepted"] is True, row["task"]
        assert row["set"]["gap"] >= -0.03


def test_the_acceptance_run_writes_both_sets_and_its_exit_code_is_the_verdict(
    tmp_path: Path,
) -> None:
    code = accept.main(
        [
            "--descriptions", str(V2), "--out", str(tmp_path / "out"),
            "--tasks", "fashion-spurious", "--data-root", str(tmp_path / "data"),
            "--arch", "test-tiny-vit", "--quick", "--threads", "1",
        ]
    )  # fmt: skip
    [row] = json.loads((tmp_path / "out/accept.json").read_text())
    assert row["task"] == "fashion-spurious" and row["sentences_per_class"] == [3, 3]
    for which in ("set", "hand_written"):
        found = row[which]
        assert found["images"] == row["images"] > 0
        assert set(found["groups"]) == {"aligned", "conflicting"}
        assert found["gap"] == round(found["concept_top1"] - found["default_top1"], 4)
    assert code == (0 if row["set"]["accepted"] else 1)
    table = (tmp_path / "out/accept.md").read_text()
    assert "| fashion-spurious |" in table and ("| yes |" in table or "| no |" in table)
