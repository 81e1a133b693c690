"""The shift benchmark with another description set, and comparing two sets image by image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.shift import descriptions as sets
from bench.shift.plan import run_config
from bench.shift.run import make_plan, parse, run_key
from models.config import WiseConfig
from models.pipeline import finetune
from models.wiseft import select
from robust_clip_offline.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
PROPOSED = ROOT / "bench/results/descriptions-2026-12-07/proposed.json"


def _sets_for(*tasks: str) -> dict[str, dict[str, list[str]]]:
    return {t: {c: [f"a {c}, drawn."] for c in TASKS[t].descriptions} for t in tasks}


def test_the_committed_proposed_sets_cover_every_class_of_the_shift_tasks() -> None:
    loaded = sets.load_sets(PROPOSED, {t: list(task.descriptions) for t, task in TASKS.items()})
    assert set(loaded) == set(TASKS)
    # The proposal's own result file is where they came from (training split only).
    for task, classes in loaded.items():
        result = json.loads(PROPOSED.with_name(f"{task}.json").read_text())
        assert classes == result["result"]["proposed"]


def test_a_description_file_is_checked_and_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    classes = {"digits-natural": list(TASKS["digits-natural"].descriptions)}
    for content, message in [
        ("not json", "not a readable JSON file"),
        ("[1, 2]", "expected"),
        (json.dumps(_sets_for("fashion-spurious")), "no set for task.*digits-natural"),
        (json.dumps({"digits-natural": {"digit 0": ["a zero."]}}), "missing class.*digit 1"),
        (
            json.dumps(
                {"digits-natural": {**_sets_for("digits-natural")["digits-natural"], "x": ["x"]}}
            ),
            r"unknown class.*'x'",
        ),
        (
            json.dumps(
                {"digits-natural": {**_sets_for("digits-natural")["digits-natural"], "digit 3": []}}
            ),
            "digit 3: expected a non-empty list",
        ),
        (
            json.dumps(
                {
                    "digits-natural": {
                        **_sets_for("digits-natural")["digits-natural"],
                        "digit 3": [" "],
                    }
                }
            ),
            "digit 3: expected a non-empty list",
        ),
    ]:
        path.write_text(content)
        with pytest.raises(SystemExit, match=message):
            sets.load_sets(path, classes)
    with pytest.raises(SystemExit, match="not a readable JSON"):
        make_plan(parse(["--tasks", "digits-natural", "--descriptions", str(tmp_path / "none")]))


def test_runs_use_the_given_set_and_their_keys_and_plan_name_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.shift.run as bench_run

    file = tmp_path / "sets.json"
    file.write_text(json.dumps(_sets_for("digits-natural", "fashion-spurious")))
    args = ["--tasks", "digits-natural", "--methods", "drm-weight", "--seeds", "0"]
    own = make_plan(parse([*args, "--out", str(tmp_path / "own")]))
    other = make_plan(parse([*args, "--out", str(tmp_path / "o"), "--descriptions", str(file)]))
    assert own.descriptions is None and own.per_image  # RUN_FORMAT 3: every run keeps them
    assert other.per_image and other.descriptions == _sets_for("digits-natural")

    task, manifest = TASKS["digits-natural"], tmp_path / "data" / "manifest.csv"
    hp = {"lr": 1e-5, "lam": 1.0, "epochs": 2, "batch_size": 64, "weight_decay": 0.1}
    hp["warmup_steps"] = 10
    written = bench_run.descriptions_path(other, task)
    assert written is not None and json.loads(written.read_text()) == other.descriptions[task.name]
    cfg = run_config(other, task, manifest, "drm-weight", 0, tmp_path, hp, descriptions=written)
    assert cfg.data.descriptions == str(written)
    assert cfg.data.diagnose_descriptions  # free for DRM: the concept head's accuracy is kept
    default = run_config(own, task, manifest, "drm-weight", 0, tmp_path, hp)
    assert default.data.descriptions == str(manifest.with_name("descriptions.json"))
    assert bench_run.descriptions_path(own, task) is None
    # A run of another set is another run.
    keys = {run_key(p, task.name, "drm-weight", 0, hp) for p in (own, other)}
    assert len(keys) == 2
    changed = _sets_for("digits-natural")
    changed["digits-natural"]["digit 0"] = ["a round zero."]
    again = bench_run.Plan(**{**other.__dict__, "descriptions": changed})
    assert run_key(again, task.name, "drm-weight", 0, hp) not in keys

    seen: list[Path | None] = []

    def fake_run_one(plan: Any, task: Any, manifest: Path, method: str, seed: int, hp: Any) -> Any:
        seen.append(bench_run.descriptions_path(plan, task))
        return {"task": task.name, "method": method, "seed": seed, "curve": [], "hparams": hp}

    monkeypatch.setattr(bench_run, "run_one", fake_run_one)
    monkeypatch.setattr(bench_run, "build_task", lambda *a, **k: manifest)
    monkeypatch.setattr(bench_run.report, "run_line", lambda run: run["method"])
    results = bench_run.execute(other)
    assert results["plan"]["descriptions"]["file"] == str(file)
    digest = sets.set_digest(other.descriptions["digits-natural"])
    assert results["plan"]["descriptions"]["sets"] == {"digits-natural": digest}
    assert results["plan"]["per_image"] is True
    assert seen == [written, written]  # zero-shot and DRM, both with the given set
    own.out.mkdir()
    assert bench_run.execute(own)["plan"]["descriptions"] is None


def test_hits_pack_into_hex_and_back() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 7, 8, 9, 800):
        hits = rng.random(n) < 0.6
        packed = sets.pack(hits)
        assert packed["n"] == n and len(packed["hits"]) == 2 * ((n + 7) // 8)
        assert (sets.unpack(packed) == hits).all()


def test_paired_bootstrap_centres_on_the_difference_and_narrows_with_pairing() -> None:
    rng = np.random.default_rng(1)
    base = rng.random((3, 400)) < 0.7
    same = sets.paired_bootstrap(base, base)
    assert same == (0.0, 0.0, 0.0)
    better = base.copy()
    better[:, :40] = True  # up to 40 more images right of 400, in every seed
    point, low, high = sets.paired_bootstrap(better, base)
    assert point == pytest.approx((better.astype(float) - base).mean())
    assert 0 < low < point < high < 0.1
    # Unrelated draws of the same accuracy: the interval covers 0.
    other = rng.random((3, 400)) < 0.7
    _, low, high = sets.paired_bootstrap(other, base)
    assert low < 0 < high
    with pytest.raises(ValueError, match="same"):
        sets.paired_bootstrap(base[:2], base)
    # Over splits: the mean of the splits' differences.
    point, low, high = sets.split_bootstrap({"a": better, "b": base}, {"a": base, "b": base})
    assert point == pytest.approx((better.astype(float) - base).mean() / 2)
    assert 0 < low < high
    with pytest.raises(ValueError, match="splits differ"):
        sets.split_bootstrap({"a": base}, {"b": base})


def _results(
    label: str | None, hits: dict[int, dict[str, dict[str, np.ndarray]]], method: str = "drm-weight"
) -> Any:
    """results.json of one set: ``method`` on task t, per seed: {where: {split: hits}}."""
    runs = []
    for seed, by_where in hits.items():
        selected = 0.5

        def metrics(where: str, by_where: Any = by_where) -> dict[str, Any]:
            return {s: {"dual": {"top1": float(h.mean())}} for s, h in by_where[where].items()}

        runs.append(
            {
                "task": "t",
                "method": method,
                "seed": seed,
                "selected_alpha": selected,
                "curve": [
                    {"alpha": 0.5, "metrics": metrics("selected")},
                    {"alpha": 1.0, "metrics": metrics("alpha1")},
                ],
                "per_image": {
                    w: {s: sets.pack(h) for s, h in by_split.items()}
                    for w, by_split in by_where.items()
                },
            }
        )
        if method != "zeroshot":
            runs[-1]["description_diagnostics"] = {"concept_top1": 0.8 if label is None else 0.9}
    plan = {
        "tasks": {"t": {"ood_splits": ["ood_a", "ood_b"]}},
        "descriptions": None if label is None else {"file": label, "sets": {}},
    }
    return {"plan": plan, "runs": runs}


def test_the_comparison_reads_both_alphas_pairs_images_and_says_when_nothing_differs(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)

    def draw(p: float) -> dict[str, np.ndarray]:
        return {s: rng.random(300) < p for s in ("test", "ood_a", "ood_b")}

    base_hits = {s: {"selected": draw(0.8), "alpha1": draw(0.8)} for s in (0, 1, 2)}
    other_hits = {
        s: {
            "selected": {k: v.copy() for k, v in base_hits[s]["selected"].items()},
            "alpha1": draw(0.8),
        }
        for s in (0, 1, 2)
    }
    for s in (0, 1, 2):  # at the selected alpha B gets 60 more OOD images of 300 right
        other_hits[s]["selected"]["ood_a"][:60] = True
    a = tmp_path / "a.json"
    b = tmp_path / "b.json"
    a.write_text(json.dumps(_results(None, base_hits)))
    b.write_text(json.dumps(_results("x/proposed.json", other_hits)))
    assert sets.main([str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "comparison.json").read_text())
    row = result["rows"][0]
    assert result["base"] == "hand-written" and result["other"] == "proposed.json"
    assert row["seeds"] == [0, 1, 2]
    assert row["selected"]["diff_id"] == [0.0, 0.0, 0.0]
    point, low, _ = row["selected"]["diff_ood"]
    gained = [
        other_hits[s]["selected"]["ood_a"].mean() - base_hits[s]["selected"]["ood_a"].mean()
        for s in (0, 1, 2)
    ]
    assert point == pytest.approx(np.mean(gained) / 2) and low > 0
    assert row["concept_top1"] == {"base": [0.8] * 3, "other": [0.9] * 3}
    text = (tmp_path / "out" / "comparison.md").read_text()
    selected_line, alpha1_line = [line for line in text.splitlines() if line.startswith("| t |")]
    assert "no reliable difference" in selected_line  # the ID difference is 0
    assert selected_line.count("no reliable difference") == 1  # the OOD gain is reliable
    assert alpha1_line.count("no reliable difference") == 2  # independent draws
    # Hits that disagree with the curve are a broken record, not a figure.
    broken = _results(None, base_hits)
    broken["runs"][0]["curve"][0]["metrics"]["test"]["dual"]["top1"] = 0.0
    a.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="disagree"):
        sets.main([str(a), str(b), "--out", str(tmp_path / "out")])
    # The zero-shot evaluation: one model, no fine-tuned end; no concept-head record.
    zeroshot = {0: {"selected": draw(0.8)}}
    zeroshot[0]["alpha1"] = zeroshot[0]["selected"]
    a.write_text(json.dumps(_results(None, zeroshot, "zeroshot")))
    b.write_text(json.dumps(_results("p.json", zeroshot, "zeroshot")))
    assert sets.main([str(a), str(b), "--method", "zeroshot", "--out", str(tmp_path / "z")]) == 0
    row = json.loads((tmp_path / "z" / "comparison.json").read_text())["rows"][0]
    assert "alpha1" not in row and row["selected"]["diff_ood"] == [0.0, 0.0, 0.0]
    assert "(fine-tuned)" not in (tmp_path / "z" / "comparison.md").read_text()
    with pytest.raises(SystemExit, match="no task has flyp runs"):
        sets.main([str(b), str(b), "--method", "flyp", "--out", str(tmp_path / "out")])


def test_per_image_records_are_the_curves_figures_at_every_alpha_and_head(
    tmp_path: Path,
) -> None:
    # A real (tiny, random-weight) model, 2 steps: the records the evaluation keeps must
    # reproduce the card's top-1 (every split) and true_prob and NLL (validation) at every alpha
    # and head, and the served head's hits at the selected alpha and alpha 1.
    from bench.shift import records
    from models.config import load_run_config
    from models.data.synthetic import write_shapes_dataset
    from models.metrics import NLL_FLOOR, unpack_true_prob

    root = write_shapes_dataset(tmp_path / "shapes", per_class=6, size=32)
    cfg = load_run_config(
        None,
        [
            f"data.path={root}",
            f"data.descriptions={root / 'descriptions.json'}",
            "data.ood_splits=[ood_test]",
            "backbone.arch=test-tiny-vit",
            "objective.name=drm",
            "train.max_steps=2",
            "train.batch_size=8",
            "train.lr=0.01",
            "wise.alphas=[0, 0.5, 1]",
            "wise.selection=fixed",
            "wise.fixed_alpha=0.5",
            f"output_dir={tmp_path / 'out'}",
        ],
    )
    result = finetune(cfg, record_images=True)
    curve, images = records.split_images(result.card["wise"]["curve"])
    assert images is not None and images["alphas"] == [0.0, 0.5, 1.0]
    assert set(images["splits"]) == {"val", "test", "ood_test"}
    assert all("images" not in m for p in curve for s in p["metrics"].values() for m in s.values())
    run = {"task": "t", "method": "drm", "seed": 0, "curve": curve, "images": images}
    run["selected_alpha"] = result.card["wise"]["selected_alpha"]
    for p in curve:
        for split, by_head in p["metrics"].items():
            for head, m in by_head.items():
                record = records.record_at(run, p["alpha"], split, head)
                assert records.hits_at(run, p["alpha"], split, head).mean() == pytest.approx(
                    m["top1"]
                )
                assert ("true_prob" in record) == (split == "val")
                if split == "val":
                    probs = unpack_true_prob(record)
                    assert probs.mean() == pytest.approx(m["true_prob"], abs=2e-3)
                    nll = -np.log(np.maximum(probs, NLL_FLOOR)).mean()
                    assert nll == pytest.approx(m["nll"], abs=5e-3)
    served = records.served_hits(run)
    by_alpha = {p["alpha"]: p["metrics"] for p in curve}
    for where, alpha in (("selected", 0.5), ("alpha1", 1.0)):
        assert set(served[where]) == {"test", "ood_test"}
        for split, packed in served[where].items():
            assert sets.unpack(packed).mean() == pytest.approx(
                by_alpha[alpha][split]["dual"]["top1"]
            )
    # and the rules read them back exactly as the pipeline did
    points = records.curve_points(run)
    assert [p.alpha for p in points] == [0.0, 0.5, 1.0]
    assert select(points, WiseConfig(selection="paired")).alpha in (0.0, 0.5, 1.0)
    assert [p.alpha for p in records.curve_points(run, (0.0, 1.0))] == [0.0, 1.0]


def test_the_mean_over_tasks_averages_the_tasks_and_their_draws() -> None:
    rng = np.random.default_rng(3)

    def both(p: float) -> dict[int, dict[str, dict[str, np.ndarray]]]:
        return {
            s: {
                w: {k: rng.random(200) < p for k in ("test", "ood_a", "ood_b")}
                for w in ("selected", "alpha1")
            }
            for s in (0, 1, 2)
        }

    def two_tasks(label: str | None, t: Any, u: Any) -> Any:
        results = _results(label, t)
        extra = _results(label, u)
        results["runs"] += [{**r, "task": "u"} for r in extra["runs"]]
        results["plan"]["tasks"]["u"] = results["plan"]["tasks"]["t"]
        return results

    base_t, base_u, other_t, other_u = both(0.5), both(0.5), both(0.5), both(0.9)
    result = sets.compare(
        two_tasks(None, base_t, base_u), two_tasks("p", other_t, other_u), "drm-weight"
    )
    t, u, mean = result["rows"]
    assert mean["task"] == "mean over tasks"
    for where in ("selected", "alpha1"):
        for key in ("id", "ood"):
            point, low, high = mean[where][f"diff_{key}"]
            assert point == pytest.approx(
                (t[where][f"diff_{key}"][0] + u[where][f"diff_{key}"][0]) / 2
            )
            assert low < point < high
            assert high - low < u[where][f"diff_{key}"][2] - u[where][f"diff_{key}"][1] + 0.05
        assert mean[where]["other"]["id"] == pytest.approx(
            (t[where]["other"]["id"] + u[where]["other"]["id"]) / 2
        )
    assert mean["concept_top1"] == {"base": [0.8], "other": [0.9]}
    assert "| mean over tasks |" in sets.markdown(result)
