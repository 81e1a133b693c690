"""Running the benchmark with another description set, and comparing two sets' runs.

``--descriptions FILE`` replaces each task's hand-written concept descriptions with the sets in
FILE, a JSON object ``{task: {class: [sentence, ...]}}`` (every class of every task run, none
other). Runs then record, per image, whether the served head is right (``per_image``), so two
sets' runs of the same seeds can be compared image by image:

    python -m bench.shift.descriptions HAND/results.json PROPOSED/results.json --out DIR

writes ``comparison.md`` and ``comparison.json``: ID test and mean OOD top-1 per task for both
sets at the selected WiSE-FT alpha (the tolerance rule) and at alpha 1, the paired difference
with a 95% bootstrap interval over seeds and images, and the frozen concept head's top-1 on the
training images.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.json_values import stable_hash

BOOTSTRAP = 2000
# Per-image hits are kept for these heads' served output only.
HEAD = "dual"

DescriptionSets = dict[str, dict[str, list[str]]]


def load_sets(path: Path, tasks: Mapping[str, Sequence[str]]) -> DescriptionSets:
    """The sets in ``path`` for ``tasks`` ({task: its classes}); SystemExit naming what is wrong."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--descriptions {path}: not a readable JSON file ({exc})") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"--descriptions {path}: expected {{task: {{class: [sentences]}}}}")
    missing = [t for t in tasks if t not in raw]
    if missing:
        raise SystemExit(f"--descriptions {path}: no set for task(s) {', '.join(missing)}")
    sets: DescriptionSets = {}
    for task, classes in tasks.items():
        given = raw[task]
        if not isinstance(given, dict):
            raise SystemExit(f"--descriptions {path}: {task} must map class -> [sentences]")
        unknown = sorted(set(given) - set(classes))
        absent = [c for c in classes if c not in given]
        if unknown or absent:
            raise SystemExit(
                f"--descriptions {path}: {task}: unknown class(es) {unknown}, "
                f"missing class(es) {absent}"
            )
        sets[task] = {}
        for c in classes:
            texts = given[c]
            if (
                not isinstance(texts, list)
                or not texts
                or not all(isinstance(t, str) and t.strip() for t in texts)
            ):
                raise SystemExit(
                    f"--descriptions {path}: {task} / {c}: expected a non-empty list of "
                    "non-empty sentences"
                )
            sets[task][c] = list(texts)
    return sets


def set_digest(sets: Mapping[str, Sequence[str]]) -> str:
    """What a run's key records of its task's set."""
    return stable_hash({c: list(t) for c, t in sets.items()})[:16]


# ---------------------------------------------------------------------------------------------
# Per-image hits, packed


def pack(hits: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """0/1 per image as hex of packed bits (an 800-image split: 200 characters)."""
    bits = np.asarray(hits, dtype=bool)
    return {"n": int(bits.size), "hits": np.packbits(bits).tobytes().hex()}


def unpack(packed: Mapping[str, Any]) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed["hits"]), dtype=np.uint8))
    return bits[: packed["n"]].astype(bool)


# ---------------------------------------------------------------------------------------------
# The paired bootstrap


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a - b and its 95% interval; a, b: [seeds, images] 0/1 of the same images.

    Each resample draws seeds with replacement, then images with replacement (the same images
    for both sets: the pairing), and takes the mean difference over them.
    """
    return interval(*bootstrap_draws({"": a}, {"": b}, resamples, seed))


def split_bootstrap(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], resamples: int = BOOTSTRAP
) -> tuple[float, float, float]:
    """As ``paired_bootstrap`` for the mean over several splits ({split: [seeds, images]}):
    each split is resampled on its own and the splits' means are averaged (mean OOD)."""
    return interval(*bootstrap_draws(a, b, resamples))


def bootstrap_draws(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    resamples: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """The mean over splits of mean(a - b), and its value in each resample (the seeds drawn
    once per resample, the images of each split on their own)."""
    names = sorted(a)
    if not names or sorted(b) != names:
        raise ValueError(f"splits differ: {sorted(a)} against {sorted(b)}")
    rng = np.random.default_rng(seed)
    seeds = a[names[0]].shape[0]
    s = rng.integers(0, seeds, size=(resamples, seeds))
    totals = np.zeros(resamples)
    point = 0.0
    for name in names:
        if a[name].ndim != 2 or a[name].shape != b[name].shape or a[name].shape[0] != seeds:
            raise ValueError(
                f"{name or 'a'} {a[name].shape} and {b[name].shape} must be the same "
                "[seeds, images]"
            )
        diff = a[name].astype(float) - b[name].astype(float)
        point += diff.mean()
        images = diff.shape[1]
        i = rng.integers(0, images, size=(resamples, images))
        # The mean of diff[s[r]][:, i[r]] for every r at once: how often each seed and each
        # image is drawn, weighted through diff.
        seed_counts = _counts(s, seeds)
        image_counts = _counts(i, images)
        totals += np.einsum("rs,sn,rn->r", seed_counts, diff, image_counts) / (seeds * images)
    k = len(names)
    return point / k, totals / k


def _counts(draws: np.ndarray, size: int) -> np.ndarray:
    """[resamples, size]: how many times each index was drawn in each resample."""
    counts = np.zeros((draws.shape[0], size))
    np.add.at(counts, (np.arange(draws.shape[0])[:, None], draws), 1.0)
    return counts


def interval(point: float, draws: np.ndarray) -> tuple[float, float, float]:
    """The point and the 95% percentile interval of its bootstrap draws."""
    low, high = np.quantile(draws, [0.025, 0.975])
    return float(point), float(low), float(high)


# ---------------------------------------------------------------------------------------------
# The comparison


def _label(results: Mapping[str, Any]) -> str:
    source = results["plan"].get("descriptions")
    return "hand-written" if source is None else Path(source["file"]).name


def _hits(run: Mapping[str, Any], where: str, split: str) -> np.ndarray:
    return unpack(run["per_image"][where][split])


def _top1(run: Mapping[str, Any], alpha: float, split: str) -> float:
    for p in run["curve"]:
        if abs(p["alpha"] - alpha) < 1e-9:
            return float(p["metrics"][split][HEAD]["top1"])
    raise KeyError(f"alpha {alpha} not on the curve of {run['task']} seed {run['seed']}")


def compare(base: Mapping[str, Any], other: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``other`` - ``base`` per task for ``method``'s runs of the seeds both hold."""
    rows = []
    # (where, id or ood) -> each task's (point, bootstrap draws): the mean over tasks
    pooled: dict[tuple[str, str], list[tuple[float, np.ndarray]]] = {}
    for task, info in base["plan"]["tasks"].items():
        if task not in other["plan"]["tasks"]:
            continue
        ood = info["ood_splits"]

        def runs(results: Mapping[str, Any], task: str = task) -> dict[int, dict[str, Any]]:
            return {
                r["seed"]: r for r in results["runs"] if r["task"] == task and r["method"] == method
            }

        a_runs, b_runs = runs(other), runs(base)
        seeds = sorted(set(a_runs) & set(b_runs))
        if not seeds:
            continue
        row: dict[str, Any] = {"task": task, "seeds": seeds, "ood_splits": ood}
        # The zero-shot evaluation is one model: no fine-tuned end to read.
        for where in ("selected",) if method == "zeroshot" else ("selected", "alpha1"):
            entry: dict[str, Any] = {}
            for name, results in (("base", b_runs), ("other", a_runs)):
                alphas = [
                    results[s]["selected_alpha"] if where == "selected" else 1.0 for s in seeds
                ]
                entry[name] = {
                    "alphas": alphas,
                    "id": float(
                        np.mean(
                            [
                                _top1(results[s], al, "test")
                                for s, al in zip(seeds, alphas, strict=True)
                            ]
                        )
                    ),
                    "ood": float(
                        np.mean(
                            [
                                np.mean([_top1(results[s], al, sp) for sp in ood])
                                for s, al in zip(seeds, alphas, strict=True)
                            ]
                        )
                    ),
                }
            stack = {
                name: {
                    sp: np.stack([_hits(results[s], where, sp) for s in seeds])
                    for sp in ["test", *ood]
                }
                for name, results in (("base", b_runs), ("other", a_runs))
            }
            # The stored hits must give the curve's figures: they are the same model's.
            for name in ("base", "other"):
                measured = float(np.mean([stack[name]["test"].mean()]))
                if abs(measured - entry[name]["id"]) > 1e-6:
                    raise ValueError(f"{task} {where} {name}: per-image hits disagree with curve")
            for key, splits in (("id", ["test"]), ("ood", ood)):
                point, draws = bootstrap_draws(
                    {sp: stack["other"][sp] for sp in splits},
                    {sp: stack["base"][sp] for sp in splits},
                )
                entry[f"diff_{key}"] = interval(point, draws)
                pooled.setdefault((where, key), []).append((point, draws))
            row[where] = entry
        row["concept_top1"] = {
            name: [(res[s].get("description_diagnostics") or {}).get("concept_top1") for s in seeds]
            for name, res in (("base", b_runs), ("other", a_runs))
        }
        rows.append(row)
    if len(rows) > 1:
        mean: dict[str, Any] = {"task": "mean over tasks", "seeds": rows[0]["seeds"]}
        for where in ("selected", "alpha1"):
            if where not in rows[0]:
                continue
            mean[where] = {
                name: {k: float(np.mean([r[where][name][k] for r in rows])) for k in ("id", "ood")}
                for name in ("base", "other")
            }
            for key in ("id", "ood"):
                parts = pooled[(where, key)]
                mean[where][f"diff_{key}"] = interval(
                    float(np.mean([p for p, _ in parts])), np.mean([d for _, d in parts], axis=0)
                )
        mean["concept_top1"] = {
            name: [float(np.mean([_first(r["concept_top1"][name]) for r in rows]))]
            if all(_first(r["concept_top1"][name]) is not None for r in rows)
            else [None]
            for name in ("base", "other")
        }
        rows.append(mean)
    return {"base": _label(base), "other": _label(other), "method": method, "rows": rows}


def _first(values: Sequence[float | None]) -> float | None:
    return values[0] if values else None


def _interval(d: Sequence[float]) -> str:
    point, low, high = d
    verdict = "" if low > 0 or high < 0 else "; no reliable difference"
    return f"{point:+.3f} ({low:+.3f}, {high:+.3f}){verdict}"


def _mean(values: Sequence[float | None]) -> str:
    """The concept head's accuracy over seeds (not recorded: runs other than DRM)."""
    known = [v for v in values if v is not None]
    return f"{np.mean(known):.3f}" if known else "-"


def markdown(comparison: Mapping[str, Any]) -> str:
    base, other = comparison["base"], comparison["other"]
    lines = [
        f"`{comparison['method']}`: {other} (B) against {base} (A), mean over seeds; B - A with a "
        f"95% paired bootstrap interval over seeds and images ({BOOTSTRAP} resamples). "
        "Concept head: the frozen model's concept head top-1 on the training images.",
        "",
        "| task | alpha | ID A | ID B | ID B - A | OOD A | OOD B | OOD B - A "
        "| concept head A / B |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in comparison["rows"]:
        concept = " / ".join(_mean(row["concept_top1"][n]) for n in ("base", "other"))
        selected = "0 (zero-shot)" if comparison["method"] == "zeroshot" else "WiSE-FT (tolerance)"
        for where, label in (("selected", selected), ("alpha1", "1 (fine-tuned)")):
            if where not in row:
                continue
            e = row[where]
            lines.append(
                f"| {row['task']} | {label} | {e['base']['id']:.3f} | {e['other']['id']:.3f} | "
                f"{_interval(e['diff_id'])} | {e['base']['ood']:.3f} | {e['other']['ood']:.3f} | "
                f"{_interval(e['diff_ood'])} | {concept} |"
            )
    lines.append("")
    lines.append(
        "Selected alphas (A; B), per seed: "
        + "; ".join(
            f"{r['task']} {r['selected']['base']['alphas']}; {r['selected']['other']['alphas']}"
            for r in comparison["rows"]
            if "alphas" in r["selected"]["base"]
        )
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.shift.descriptions",
        description="compare the runs of two description sets, image by image",
    )
    p.add_argument("base", type=Path, help="results.json of the reference set (A)")
    p.add_argument("other", type=Path, help="results.json of the set compared (B)")
    p.add_argument("--method", default="drm-weight")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    base, other = (json.loads(f.read_text()) for f in (args.base, args.other))
    result = compare(base, other, args.method)
    if not result["rows"]:
        raise SystemExit(f"no task has {args.method} runs of the same seeds in both files")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (args.out / "comparison.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
