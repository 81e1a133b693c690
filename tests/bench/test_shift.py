"""The distribution-shift benchmark: its tasks (real images, disjoint from the backbone's
alignment corpus, shifts as specified), its report, and a quick end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bench.shift import report
from bench.shift.diagnose import core_prior_stats, markdown
from bench.shift.plan import (
    ABLATIONS,
    FINE_ALPHAS,
    FULL_ALPHAS,
    LAMBDA_GRID,
    LONG_EPOCHS,
    hparams_for,
    run_config,
)
from bench.shift.run import main, make_plan, parse, run_key
from models.config import to_dict
from models.data import open_dataset
from robust_clip_offline.data import FASHION_CLASSNAMES, RESERVED, load_source, within_class_rank
from robust_clip_offline.tasks import (
    CORRUPTIONS,
    PALETTE,
    QUICK,
    SPURIOUS_ALIGNED,
    SPURIOUS_COLOURS,
    TASKS,
    Sizes,
    build_task,
    corrupted,
    read_manifest,
    upscaled,
)

ROOT = Path(__file__).resolve().parents[2]
SMALL = Sizes(train=12, val=4, test=6, ood=5)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shift")
    return {name: build_task(task, SMALL, root) for name, task in TASKS.items()}


def _origins(rows: list[dict[str, Any]]) -> dict[str, set[str]]:
    by_split: dict[str, set[str]] = {}
    for row in rows:
        by_split.setdefault(row["split"], set()).add(row["origin"])
    return by_split


def test_every_image_comes_from_a_benchmark_range_never_the_corpus(
    built: dict[str, Path],
) -> None:
    for manifest in built.values():
        rows = read_manifest(manifest)
        for row in rows:
            source, index = row["origin"].rsplit(":", 1)
            full = load_source(source, "all")
            reserved = RESERVED[source]
            if reserved.per_class:
                rank = within_class_rank(full.labels)[int(index)]
                assert rank in reserved.benchmark, row
            else:
                assert int(index) in reserved.benchmark, row


def test_id_splits_are_disjoint_and_ood_holds_no_training_image(built: dict[str, Path]) -> None:
    for name, manifest in built.items():
        origins = _origins(read_manifest(manifest))
        assert not origins["train"] & origins["val"], name
        assert not origins["train"] & origins["test"], name
        assert not origins["val"] & origins["test"], name
        for split in TASKS[name].ood_splits:
            assert not origins[split] & (origins["train"] | origins["val"]), (name, split)


def test_tasks_open_as_ordinary_datasets_with_the_counts_asked_for(
    built: dict[str, Path],
) -> None:
    for name, manifest in built.items():
        ds = open_dataset(manifest)
        counts = ds.counts()
        assert len(ds.classnames) == 10
        assert counts["train"] == {c: SMALL.train for c in ds.classnames}, name
        assert counts["val"] == {c: SMALL.val for c in ds.classnames}, name
        for split in TASKS[name].ood_splits:
            assert counts[split] == {c: SMALL.ood for c in ds.classnames}, (name, split)
        descriptions = json.loads(manifest.with_name("descriptions.json").read_text())
        assert sorted(descriptions) == sorted(ds.classnames)


def test_descriptions_name_no_colour_or_background() -> None:
    words = {*SPURIOUS_COLOURS, "background", "colour", "color", "white", "black"}
    for task in TASKS.values():
        for texts in task.descriptions.values():
            for text in texts:
                assert not words & set(text.replace(",", " ").replace(".", " ").split()), text


def test_background_colour_predicts_the_class_in_id_and_misleads_out_of_it(tmp_path: Path) -> None:
    sizes = Sizes(train=60, val=10, test=10, ood=20)
    manifest = build_task(TASKS["fashion-spurious"], sizes, tmp_path)
    rows = read_manifest(manifest)
    groups = Counter((r["split"], r["group"]) for r in rows)
    aligned = groups[("train", "aligned")] / (10 * sizes.train)
    assert abs(aligned - SPURIOUS_ALIGNED) < 0.05
    assert groups[("ood_swapped", "aligned")] == 0
    assert groups[("ood_random", "aligned")] < 10 * 20 * 0.3
    classes = list(FASHION_CLASSNAMES)  # colour k belongs to the source's class k
    for row in rows[:: len(rows) // 40]:
        corner = np.asarray(Image.open(manifest.parent / row["path"]))[0, 0]
        colour = SPURIOUS_COLOURS.index(
            min(PALETTE, key=lambda c: np.abs(np.subtract(PALETTE[c], corner)).sum())
        )
        k = classes.index(row["label"])
        expected_aligned = colour == k
        assert (row["group"] == "aligned") is expected_aligned, row
        if row["split"] == "ood_swapped":
            assert colour == (k + 1) % 10


def test_corruptions_cycle_and_grow_with_severity(built: dict[str, Path]) -> None:
    rows = read_manifest(built["animals-corruption"])
    assert {r["group"] for r in rows if r["split"] == "ood_sev3"} == set(CORRUPTIONS)
    gray = np.asarray(load_source("animal-mnist").images[0])
    clean = upscaled(gray).astype(np.float64)
    change = {
        s: np.abs(corrupted(upscaled(gray), "gaussian_noise", s, seed=1) - clean).mean()
        for s in (1, 5)
    }
    assert change[5] > 2 * change[1] > 0
    again = corrupted(upscaled(gray), "gaussian_noise", 5, seed=1)
    assert np.array_equal(again, corrupted(upscaled(gray), "gaussian_noise", 5, seed=1))


def test_a_build_is_deterministic_and_reused(tmp_path: Path) -> None:
    task = TASKS["animals-corruption"]
    first = build_task(task, SMALL, tmp_path / "a")
    second = build_task(task, SMALL, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    for row in read_manifest(first)[::7]:
        a = (first.parent / row["path"]).read_bytes()
        assert a == (second.parent / row["path"]).read_bytes()
    stamp = (first.parent / "task.json").stat().st_mtime_ns
    assert build_task(task, SMALL, tmp_path / "a") == first
    assert (first.parent / "task.json").stat().st_mtime_ns == stamp


def test_run_configs_use_tuned_values_and_quick_mode_trains_less(tmp_path: Path) -> None:
    hparams = tmp_path / "hparams.json"
    tuned = {"fashion-spurious": {"drm-soft": {"lr": 1e-4, "lam": 2.0}}}
    hparams.write_text(json.dumps({"offline-lite0-minilm": tuned}))
    plan = make_plan(parse(["--quick", "--hparams", str(hparams), "--out", str(tmp_path)]))
    assert plan.seeds == (0,) and plan.sizes == QUICK
    task = TASKS["fashion-spurious"]
    hp = hparams_for(plan, task.name, "drm-soft")
    cfg = to_dict(run_config(plan, task, tmp_path / "m.csv", "drm-soft", 3, tmp_path, hp))
    assert cfg["train"]["lr"] == 1e-4 and cfg["objective"]["lam"] == 2.0
    assert cfg["objective"]["wrm"] == "soft" and cfg["train"]["seed"] == 3
    assert cfg["data"]["ood_splits"] == ["ood_swapped", "ood_random"]
    assert cfg["train"]["epochs"] == 1  # quick
    assert cfg["objective"]["pc_norm"] == "prob"  # the paper's reading is the main one


def test_flyp_paper_and_long_runs_configure_what_they_say(tmp_path: Path) -> None:
    plan = make_plan(parse(["--long", "--hparams", str(tmp_path / "none.json")]))
    assert plan.out == Path("runs/bench-shift-long")
    task = TASKS["digits-natural"]

    def config(method: str) -> dict[str, Any]:
        hp = hparams_for(plan, task.name, method)
        return to_dict(run_config(plan, task, tmp_path / "m.csv", method, 0, tmp_path, hp))

    paper, flyp = config("flyp-paper"), config("flyp")
    assert paper["objective"]["preset"] == "flyp-paper" and flyp["objective"]["preset"] is None
    assert paper["objective"]["mask_same_class"] is False and paper["train"]["grad_clip"] is None
    assert paper["train"]["weight_decay_on"] == "all" and flyp["objective"]["mask_same_class"]
    assert paper["train"]["epochs"] == flyp["train"]["epochs"] == LONG_EPOCHS
    # flyp's journal key is what it was before flyp-paper and pc_norm existed: finished runs
    # of unchanged methods stay valid; a DRM run's key changes with its p_c normalisation.
    assert "pc_norm" not in hparams_for(plan, task.name, "flyp")
    assert hparams_for(plan, task.name, "drm-soft")["pc_norm"] == "prob"
    with pytest.raises(SystemExit, match="--long"):
        main(["--long", "--tune"])


def test_the_default_head_control_and_ce_run_long_at_the_values_they_are_compared_at(
    tmp_path: Path,
) -> None:
    hparams = tmp_path / "hparams.json"
    tuned = {"fashion-spurious": {"drm-soft": {"lr": 1e-4, "lam": 0.5}, "ce": {"lr": 3e-5}}}
    hparams.write_text(json.dumps({"offline-lite0-minilm": tuned}))
    plan = make_plan(
        parse(["--long", "--fine-alphas", "--hparams", str(hparams), "--out", str(tmp_path)])
    )
    assert "drm-soft-default" in plan.methods and "ce" in plan.methods
    assert (
        plan.alphas == FINE_ALPHAS
        and len(plan.alphas) == 21
        and set(FULL_ALPHAS) <= set(plan.alphas)
    )
    task = TASKS["fashion-spurious"]

    def config(method: str) -> dict[str, Any]:
        hp = hparams_for(plan, task.name, method)
        return to_dict(run_config(plan, task, tmp_path / "m.csv", method, 0, tmp_path, hp))

    control, soft, ce = config("drm-soft-default"), config("drm-soft"), config("ce")
    # the control differs from drm-soft in p_c's head only, at drm-soft's tuned values
    assert control["objective"] == {**soft["objective"], "pc_head": "default"}
    assert control["train"] == soft["train"] and control["train"]["lr"] == 1e-4
    assert control["train"]["epochs"] == ce["train"]["epochs"] == LONG_EPOCHS
    assert ce["objective"]["name"] == "ce" and ce["train"]["lr"] == 3e-5
    # its p_c is not the concept head: no description diagnostics read from it
    assert soft["data"]["diagnose_descriptions"] and not control["data"]["diagnose_descriptions"]
    assert run_key(
        plan, task.name, "drm-soft-default", 0, hparams_for(plan, task.name, "drm-soft-default")
    ) != run_key(plan, task.name, "drm-soft", 0, hparams_for(plan, task.name, "drm-soft"))


def test_ablation_variants_change_only_their_own_settings(tmp_path: Path) -> None:
    hparams = tmp_path / "hparams.json"
    tuned = {"fashion-spurious": {"drm-weight": {"lr": 1e-4, "lam": 0.5}}}
    hparams.write_text(json.dumps({"offline-lite0-minilm": tuned}))
    plan = make_plan(parse(["--ablate", "--hparams", str(hparams)]))
    assert plan.methods == tuple(ABLATIONS) and not plan.zeroshot
    assert plan.out == Path("runs/bench-shift-ablation") and plan.seeds == (0, 1, 2)
    task = TASKS["fashion-spurious"]

    def objective(method: str) -> tuple[dict[str, Any], dict[str, Any]]:
        hp = hparams_for(plan, task.name, method)
        cfg = to_dict(run_config(plan, task, tmp_path / "m.csv", method, 0, tmp_path, hp))
        return cfg["objective"], cfg["train"]

    base, base_train = objective("drm-weight")
    assert base["lam"] == 0.5 and base["pc_mode"] == "cached" and base_train["lr"] == 1e-4
    assert base["pc_norm"] == "prob"
    lam10, lam10_train = objective("drm-weight-lam10")
    assert lam10 == {**base, "lam": 10.0} and lam10_train == base_train
    per_step, _ = objective("drm-weight-per-step")
    assert per_step == {**base, "pc_mode": "per_step"}
    affinity, _ = objective("drm-weight-affinity")
    assert affinity == {**base, "pc_norm": "affinity"}
    soft, _ = objective("drm-soft-lam5")
    assert soft["wrm"] == "soft" and soft["lam"] == 5.0 and soft["pc_norm"] == "prob"
    soft_affinity, _ = objective("drm-soft-affinity")
    assert soft_affinity["wrm"] == "soft" and soft_affinity["pc_norm"] == "affinity"
    assert {f"drm-{r}-lam{lam:g}" for r in ("weight", "soft") for lam in LAMBDA_GRID} <= set(
        ABLATIONS
    )
    # Variants are for analysis only: not accepted in the main comparison.
    with pytest.raises(SystemExit, match="unknown method"):
        make_plan(parse(["--methods", "drm-weight-lam10"]))
    with pytest.raises(SystemExit, match="--ablate"):
        main(["--ablate", "--tune"])


def test_tuning_chooses_on_id_val_and_ties_to_the_smaller_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.shift.run as run

    calls: list[tuple[str, float, float]] = []
    val_by_lr = {1e-5: 0.90, 3e-5: 0.95, 1e-4: 0.95}
    val_by_lam = {
        "drm-weight": {0.5: 0.80, 1.0: 0.85, 2.0: 0.85, 5.0: 0.84, 10.0: 0.70},
        "drm-soft": {0.5: 0.80, 1.0: 0.81, 2.0: 0.82, 5.0: 0.86, 10.0: 0.86},
    }

    def fake_run(
        plan: Any, task: Any, manifest: Path, method: str, seed: int, hp: Any, tuning: bool = False
    ) -> dict[str, Any]:
        assert tuning and seed == 0
        calls.append((method, hp["lr"], hp["lam"]))
        val = val_by_lr[hp["lr"]] if method == "flyp" else val_by_lam[method][hp["lam"]]
        return {**_run(method, seed, val, 0.3, 1.0), "task": task.name}

    monkeypatch.setattr(run, "run_one", fake_run)
    monkeypatch.setattr(run, "build_task", lambda *_: tmp_path / "manifest.csv")
    hparams = tmp_path / "hparams.json"
    hparams.write_text(
        json.dumps({"offline-lite0-minilm": {"digits-natural": {"flyp": {"lr": 1e-4}}}})
    )
    plan = make_plan(parse(["--tasks", "digits-natural", "--hparams", str(hparams)]))

    chosen = run.tune(plan)["chosen"]["digits-natural"]
    assert chosen["flyp"] == chosen["ce"] == chosen["flyp-paper"] == {"lr": 3e-5}
    # Each DRM reading gets its own lambda, from the whole grid.
    assert chosen["drm-weight"] == {"lr": 3e-5, "lam": 1.0}
    assert chosen["drm-soft"] == {"lr": 3e-5, "lam": 5.0}
    assert [c[0] for c in calls] == ["flyp"] * 3 + ["drm-weight"] * 5 + ["drm-soft"] * 5

    calls.clear()
    chosen = run.tune(plan, "lam")["chosen"]["digits-natural"]
    expected = [(m, 1e-4, lam) for m in ("drm-weight", "drm-soft") for lam in LAMBDA_GRID]
    assert calls == expected  # the stored lr
    assert chosen["drm-soft"] == {"lr": 1e-4, "lam": 5.0}


def test_core_prior_statistics_per_group() -> None:
    # Two classes; p_c rows as the frozen model gives them (max exactly 1).
    cache = torch.tensor([[1.0, 0.0], [1.0, 0.5], [0.0, 1.0], [1.0, 0.0]])
    stats = core_prior_stats(cache, [0, 0, 1, 1], ["aligned", "aligned", "aligned", "conflicting"])
    assert stats["all"]["n"] == 4 and stats["all"]["uniform"] == 0.5
    assert stats["all"]["concept_top1"] == pytest.approx(0.75)
    assert stats["aligned"]["pc_true"] == pytest.approx(1.0)
    assert stats["conflicting"]["pc_true"] == 0.0 and stats["conflicting"]["concept_top1"] == 0.0
    # soft target on the true class: 1, 1/1.5, 1 for the aligned images.
    assert stats["aligned"]["soft_true"] == pytest.approx((1 + 1 / 1.5 + 1) / 3)
    assert set(core_prior_stats(cache, [0, 0, 1, 1], [None] * 4)) == {"all"}
    both = {"t": {"prob": stats, "affinity": {**stats, "conflicting": stats["aligned"]}}}
    # task, group, n, p_c prob, p_c affinity, concept top-1, soft prob, soft affinity, uniform
    assert "| t | conflicting | 1 | 0.000 | 1.000 | 0.000 | 0.000 | 0.889 | 0.500 |" in markdown(
        both
    )


def test_bad_arguments_name_what_is_wrong() -> None:
    with pytest.raises(SystemExit, match="unknown task"):
        make_plan(parse(["--tasks", "cifar"]))
    with pytest.raises(SystemExit, match="unknown method"):
        make_plan(parse(["--methods", "flyp,sgd"]))
    with pytest.raises(SystemExit, match="--seeds"):
        make_plan(parse(["--seeds", "a,b"]))


def _run(method: str, seed: int, test: float, ood: float, selected: float) -> dict[str, Any]:
    def metrics(t: float, o: float) -> dict[str, Any]:
        head = {"top1": t, "macro_f1": t - 0.01, "worst_group_acc": None, "n": 10}
        ood_head = {"top1": o, "macro_f1": o - 0.01, "worst_group_acc": o / 2, "n": 10}
        return {
            "val": {h: head for h in report.ZEROSHOT_HEADS},
            "test": {h: head for h in report.ZEROSHOT_HEADS},
            "ood_a": {h: ood_head for h in report.ZEROSHOT_HEADS},
        }

    curve = [{"alpha": 0.0, "metrics": metrics(0.5, 0.4)}]
    if method != "zeroshot":
        curve += [
            {"alpha": 0.5, "metrics": metrics((0.5 + test) / 2, ood + 0.05)},
            {"alpha": 1.0, "metrics": metrics(test, ood)},
        ]
    return {
        "task": "t",
        "method": method,
        "seed": seed,
        "hparams": {"lr": 1e-5, "lam": 1.0, "epochs": 1, "batch_size": 8},
        "selected_alpha": selected,
        "curve": curve,
        "steps": 5,
        "wall_s": 1.0,
    }


def test_report_aggregates_seeds_and_draws_the_plot(tmp_path: Path) -> None:
    runs = [
        _run("zeroshot", 0, 0, 0, 0.0),
        _run("flyp", 0, 0.8, 0.2, 1.0),
        _run("flyp", 1, 0.9, 0.4, 1.0),
        _run("drm-weight", 0, 0.85, 0.25, 1.0),
        _run("drm-weight", 1, 0.9, 0.5, 1.0),
    ]
    # flyp seed 1: ID validation 0.85 at alpha 0.5, 0.90 at 1. One binomial standard error of
    # 0.9 on 10 images is 0.095: the tolerance rule takes 0.5, the best-ID-val rule 1.
    middle = runs[2]["curve"][1]["metrics"]
    middle["val"] = {h: {**middle["val"][h], "top1": 0.85} for h in report.ZEROSHOT_HEADS}
    results = {
        "plan": {
            "tasks": {"t": {"shift": "a shift", "ood_splits": ["ood_a"]}},
            "seeds": [0, 1],
            "alphas": [0, 0.5, 1],
            "backbone": "b",
            "quick": False,
        },
        "runs": runs,
        "wall_s": 60.0,
        "machine": {"cuda": None},
        "created_at": "now",
    }
    rows = {r["name"]: r for r in report.rows_for_task(runs, "t")}
    assert rows["flyp"]["top1"]["test"] == [0.8, 0.9]
    assert rows["flyp + WiSE-FT (tolerance)"]["alphas"] == [1.0, 0.5]
    assert rows["flyp + WiSE-FT (best ID val)"]["alphas"] == [1.0, 1.0]
    assert rows["flyp + WiSE-FT (tolerance)"]["top1"]["ood_a"] == [0.2, 0.4 + 0.05]
    assert rows["flyp"]["worst_group"] == {"ood": [0.1, 0.2]}  # no groups on ID test
    text = report.markdown(results)
    assert "| flyp | 0.850 ± 0.071 | 0.850 ± 0.071 | 0.300 ± 0.141 |" in text  # val, test, OOD
    assert "| zero-shot (concept) | 0.500 | 0.500 | 0.400 |" in text
    overview = report.overview(results)
    assert "| flyp | 0.850 ± 0.071 | 0.300 ± 0.141 |" in overview  # ID test, OOD mean
    assert "| zero-shot (dual) | 0.500 | 0.400 |" in overview and "concept" not in overview
    # The goal table: mean over tasks per seed, and the difference to FLYP under the same rule.
    assert "| drm-weight | 0.875 ± 0.035 | 0.375 ± 0.177 | +0.025 ± 0.035 | +0.075 ± 0.035 |" in (
        overview
    )
    assert "| flyp | 0.850 ± 0.071 | 0.300 ± 0.141 | - | - |" in overview
    # val, test, ood_a, OOD mean, its macro-F1, ID worst group (none), OOD worst group
    flyp_row = "| flyp | 0.850 ± 0.071 | 0.850 ± 0.071 | 0.300 ± 0.141 | 0.300 ± 0.141 "
    assert flyp_row + "| 0.290 ± 0.141 | - | 0.150 ± 0.071 | 1 ± 0 |" in text
    report.plot(results, tmp_path / "er.png")
    assert Image.open(tmp_path / "er.png").size[0] > 400

    other = {**results, "plan": {**results["plan"], "tasks": {"u": results["plan"]["tasks"]["t"]}}}
    other["runs"] = [{**r, "task": "u"} for r in runs]
    merged = report.merge([results, {**other, "wall_s": 90.0}])
    assert list(merged["plan"]["tasks"]) == ["t", "u"] and len(merged["runs"]) == 10
    assert merged["wall_s"] == 90.0 and "### u" in report.markdown(merged)
    # Two invocations for one task (methods split between processes) both evaluate zero-shot.
    twice = report.merge([results, {**results, "runs": [runs[0], _run("ce", 0, 0.7, 0.3, 1.0)]}])
    assert [r["method"] for r in twice["runs"]].count("zeroshot") == 1
    assert len(twice["runs"]) == len(runs) + 1
    with pytest.raises(ValueError, match="different backbones"):
        report.merge([results, {**other, "plan": {**other["plan"], "backbone": "c"}}])


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    # The CI smoke test of `make bench-shift-quick`: real offline backbone, real images, every
    # method, one seed (the backbone is built first when it is not cached: about 5 minutes).
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench.shift", "--quick", "--out", str(out)]
    cmd += ["--data-root", str(tmp_path / "data")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    methods = Counter((r["task"], r["method"]) for r in results["runs"])
    assert set(methods) == {(t, m) for t in TASKS for m in results["plan"]["methods"]}
    for run in results["runs"]:
        for p in run["curve"]:
            for split in p["metrics"].values():
                assert 0.0 <= split["dual"]["top1"] <= 1.0
        if run["method"] == "zeroshot":  # real pretrained towers: far above chance (0.1) in ID
            assert report.summary(report.point(run, 0.0))["test"] > 0.5, run["task"]
    assert (out / "effective_robustness.png").stat().st_size > 10_000
    assert "### fashion-spurious" in (out / "results.md").read_text()


def _recorded_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, int]]:
    """bench.shift.run without training: each run a made-up record; the (method, seed) of
    every run actually run, in order."""
    from bench.shift import run as bench_run

    calls: list[tuple[str, int]] = []

    def fake_run_one(plan: Any, task: Any, manifest: Path, method: str, seed: int, hp: Any) -> Any:
        calls.append((method, seed))
        record = _run(method, seed, 0.9, 0.5, 0.5 if method != "zeroshot" else 0.0)
        return {**record, "task": task.name, "hparams": dict(hp)}

    monkeypatch.setattr(bench_run, "run_one", fake_run_one)
    monkeypatch.setattr(bench_run, "build_task", lambda *a, **k: tmp_path / "manifest.csv")
    return calls


def test_finished_runs_are_journaled_and_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.shift import run as bench_run

    calls = _recorded_runs(monkeypatch, tmp_path)
    args = ["--tasks", "digits-natural", "--methods", "ce,flyp", "--seeds", "0,1"]
    plan = make_plan(parse([*args, "--out", str(tmp_path)]))
    first = bench_run.execute(plan)
    # Seed-major order: an interrupted run holds whole seeds of every method.
    assert calls == [("zeroshot", 0), ("ce", 0), ("flyp", 0), ("ce", 1), ("flyp", 1)]
    journal = tmp_path / "runs.jsonl"
    with open(journal, "a") as fh:
        fh.write('{"key": "cut off by a ki')  # a line a kill left half-written
    calls.clear()
    again = bench_run.execute(plan)
    assert calls == [] and again["runs"] == first["runs"]
    lr_changed = json.loads(json.dumps(plan.hparams))
    lr_changed.setdefault("offline-lite0-minilm", {}).setdefault("digits-natural", {})["ce"] = {
        "lr": 1.0
    }
    bench_run.execute(bench_run.Plan(**{**plan.__dict__, "hparams": lr_changed}))
    assert calls == [("ce", 0), ("ce", 1)]
    calls.clear()
    monkeypatch.setattr(bench_run, "RUN_FORMAT", bench_run.RUN_FORMAT + 1)  # stale figures
    bench_run.execute(plan)
    assert calls == [("zeroshot", 0), ("ce", 0), ("flyp", 0), ("ce", 1), ("flyp", 1)]


def test_a_journal_of_other_backbone_weights_is_refused_and_zero_shot_can_be_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The offline backbone is rebuilt per machine and a rebuild need not give the same weights:
    # runs of two builds share their keys but are not paired, so resuming across them is refused.
    from bench.shift import run as bench_run

    calls = _recorded_runs(monkeypatch, tmp_path)
    folder = tmp_path / "backbone"
    folder.mkdir()
    (folder / "open_clip_model.safetensors").write_bytes(b"weights of build 1")
    (tmp_path / "out").mkdir()
    args = ["--tasks", "digits-natural", "--methods", "ce", "--seeds", "1", "--no-zeroshot"]
    plan = make_plan(parse([*args, "--arch", str(folder), "--out", str(tmp_path / "out")]))
    first = bench_run.execute(plan)
    assert calls == [("ce", 1)]  # --no-zeroshot: another invocation of the group evaluates it
    assert first["plan"]["methods"] == ["ce"]
    digest = first["plan"]["backbone_digest"]
    assert digest and all(r["backbone_digest"] == digest for r in first["runs"])
    (folder / "open_clip_model.safetensors").write_bytes(b"weights of build 2")
    with pytest.raises(SystemExit, match="not paired") as refused:
        bench_run.execute(plan)
    assert digest in str(refused.value)
    assert calls == [("ce", 1)]  # nothing run, nothing appended
