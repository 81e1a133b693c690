"""The offline study of WiSE-FT rules and heads (bench/shift/rules.py) on synthetic runs made
with the real evaluation code (metrics and per-image records of known probabilities)."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench.shift import records, rules
from bench.shift.plan import FULL_ALPHAS
from models.metrics import evaluate_probs, image_record

CLASSES = ["a", "b", "c"]
OOD = {"t1": ["ood_x"], "t2": ["ood_x", "ood_y"]}


def _probs(n: int, skill: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    logits = torch.randn(n, 3, generator=gen)
    logits[torch.arange(n), labels] += skill
    return logits.softmax(dim=1), labels


def _run(task: str, method: str, seed: int, ood_gain: float, alphas: Any = FULL_ALPHAS) -> dict:
    """Validation and ID test improve with alpha; OOD improves with alpha by ``ood_gain``."""
    curve = []
    for a in alphas:
        metrics: dict[str, Any] = {}
        for split in ["val", "test", *OOD[task]]:
            skill = 1.0 + a + (ood_gain * a if split.startswith("ood") else 0.0)
            metrics[split] = {}
            for k, head in enumerate(("default", "concept", "dual")):
                salt = zlib.crc32(repr((task, method, seed, split, head, a)).encode())
                probs, labels = _probs(60, skill + 0.1 * (k == 0), salt)
                m = evaluate_probs(probs, labels, CLASSES)
                m["images"] = image_record(probs, labels, true_prob=split == "val")
                metrics[split][head] = m
        curve.append({"alpha": a, "metrics": metrics})
    stripped, images = records.split_images(curve)
    run = {"task": task, "method": method, "seed": seed, "curve": stripped, "images": images}
    return {**run, "selected_alpha": 0.0, "hparams": {}, "wall_s": 1.0}


def _results(alphas: Any = FULL_ALPHAS) -> dict:
    runs = [
        _run(t, m, s, gain, alphas)
        for t in OOD
        for m, gain in (("flyp", 0.0), ("drm-weight", 1.5))
        for s in (0, 1)
    ]
    tasks = {t: {"shift": "-", "ood_splits": o} for t, o in OOD.items()}
    return {"plan": {"tasks": tasks, "backbone": "x"}, "runs": runs, "wall_s": 1.0}


def test_each_reading_is_read_at_the_point_its_rule_picks() -> None:
    results = _results()
    study = rules.study(results, resamples=200)
    names = set(study["readings"])
    assert rules.REFERENCE in names and not any(" / 0.05 / " in n for n in names)
    assert len(names) == len(rules.RULES) * len(rules.HEAD_CHOICES)
    # alpha 1 on the dual head: exactly the curve's alpha-1 figures
    cells = study["readings"]["alpha-1 / 0.25 / dual"]["cells"]
    for run in results["runs"]:
        end = run["curve"][-1]["metrics"]
        assert end["test"]["dual"]["top1"] == pytest.approx(
            records.hits_at(run, 1.0, "test", "dual").mean()
        )
    for key, cell in cells.items():
        task, method = key.split("/")
        mine = [r for r in results["runs"] if r["task"] == task and r["method"] == method]
        assert cell["alphas"] == [1.0, 1.0] and cell["heads"] == ["dual", "dual"]
        expected = np.mean([r["curve"][-1]["metrics"]["test"]["dual"]["top1"] for r in mine])
        assert cell["id"] == pytest.approx(expected)
    # the default-head reading serves the default head; the choice reads both
    assert set(study["readings"]["best-top1 / 0.25 / default"]["cells"]["t1/flyp"]["heads"]) == {
        "default"
    }
    # DRM gains OOD by construction: its difference to FLYP is positive at alpha 1
    drm = study["readings"]["alpha-1 / 0.25 / dual"]["vs_baseline"]["mean over tasks/drm-weight"]
    assert drm["ood"][1] > 0
    # a reading against itself: no difference at all
    ref = study["readings"][rules.REFERENCE]["vs_reference"]
    assert ref["ood"] == (0.0, 0.0, 0.0) and ref["id"] == (0.0, 0.0, 0.0)
    assert study["chosen"] in names
    assert [r["held_out"] for r in study["held_out"]] == ["t1", "t2"]


def test_the_criterion_takes_the_best_ood_among_readings_at_equal_id() -> None:
    scores = {"a": (0.900, 0.60), "b": (0.897, 0.70), "c": (0.880, 0.90)}
    assert rules.choose(scores) == "b"  # c loses 2 points of ID: not at equal ID
    assert rules.choose({"a": (0.9, 0.6)}) == "a"


def test_the_fine_grid_is_read_where_recorded_and_the_coarse_grid_from_it(tmp_path: Path) -> None:
    from bench.shift.plan import FINE_ALPHAS

    results = _results(FINE_ALPHAS)
    path = tmp_path / "results.json.gz"
    records.write_results(results, path)
    assert records.load_results(path)["runs"][0]["images"]["alphas"] == list(FINE_ALPHAS)
    out = tmp_path / "study"
    assert rules.main([str(path), "--out", str(out), "--resamples", "100"]) == 0
    written = json.loads((out / "rules.json").read_text())
    assert any(" / 0.05 / " in n for n in written["readings"])
    coarse = written["readings"]["alpha-1 / 0.25 / dual"]["cells"]["t1/flyp"]
    assert coarse["alphas"] == [1.0, 1.0]
    assert set(written["readings"]["best-top1 / 0.25 / dual"]["cells"]["t1/flyp"]["alphas"]) <= set(
        FULL_ALPHAS
    )
    text = (out / "rules.md").read_text()
    assert "python -m bench.shift.rules" in text and "Held out" in text


def test_runs_without_records_and_bad_files_are_refused(tmp_path: Path) -> None:
    results = _results()
    del results["runs"][0]["images"]
    with pytest.raises(SystemExit, match="per-image records"):
        rules.study(results, resamples=100)
    bad = tmp_path / "bad.json.gz"
    with gzip.open(bad, "wt") as fh:
        fh.write("{not json")
    with pytest.raises(SystemExit, match="not a readable results file"):
        records.load_results(bad)
    with pytest.raises(SystemExit, match="at least 100"):
        rules.main([str(bad), "--out", str(tmp_path), "--resamples", "10"])


def test_long_runs_are_their_own_curves_compared_with_the_baseline_of_their_length(
    tmp_path: Path,
) -> None:
    short = _results()
    long = {**_results(), "plan": {**_results()["plan"], "epochs": 10}}
    paths = []
    for name, results in (("short", short), ("long", long)):
        paths.append(tmp_path / f"{name}.json.gz")
        records.write_results(results, paths[-1])
    out = tmp_path / "study"
    rules.main([*(str(p) for p in paths), "--out", str(out), "--resamples", "100"])
    written = json.loads((out / "rules.json").read_text())
    assert written["methods"] == ["flyp", "drm-weight", "flyp @10ep", "drm-weight @10ep"]
    versus = written["readings"][rules.REFERENCE]["vs_baseline"]
    assert set(versus) >= {"mean over tasks/drm-weight", "mean over tasks/drm-weight @10ep"}
    assert "mean over tasks/flyp @10ep" not in versus
    assert rules.baseline_of("ce @10ep", "flyp") == "flyp @10ep"


def test_the_chosen_reading_is_checked_on_model_cards_it_never_saw(tmp_path: Path) -> None:
    results = _results()
    run = _run("t2", "drm", 0, 1.0)
    # a card as the pipeline writes it: curve metrics with no per-image records
    curve = [
        {
            "alpha": p["alpha"],
            "metrics": {s: {h: m for h, m in by.items()} for s, by in p["metrics"].items()},
        }
        for p in run["curve"]
    ]
    card = {
        "wise": {"curve": curve},
        "config": {"data": {"val_split": "val", "ood_splits": ["ood_y"]}},
    }
    path = tmp_path / "artifact.json"
    path.write_text(json.dumps({"card": card}))
    loaded = rules.load_card(path)
    study = rules.study(results, resamples=100, cards={"demo": loaded})
    [row] = study["cards"]
    ref = row["reference"]
    # tolerance / 0.25 / dual on the card, by hand
    from models.config import WiseConfig
    from models.wiseft import CurvePoint, select

    points = [CurvePoint(p["alpha"], p["metrics"]) for p in curve]
    alpha = select(points, WiseConfig(selection="tolerance")).alpha
    at = next(p for p in curve if p["alpha"] == alpha)["metrics"]
    assert ref["alpha"] == alpha and ref["id"] == pytest.approx(at["test"]["dual"]["top1"])
    assert ref["ood"] == pytest.approx(at["ood_y"]["dual"]["top1"])  # the card's own OOD splits
    # the paired rule needs per-image hits the card did not keep: not read
    assert row["readings"]["paired-nll / 0.25 / dual"] is None
    assert row["readings"]["best-nll / 0.25 / dual"] is not None
    assert "Checked on model cards" in rules.markdown(study, "cmd")
    (tmp_path / "bad.json").write_text(json.dumps({"wise": {}}))
    with pytest.raises(SystemExit, match="no model card"):
        rules.load_card(tmp_path / "bad.json")
