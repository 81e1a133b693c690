"""Tables and the effective-robustness plot from ``results.json`` (pure functions of it)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from models.config import WiseConfig
from models.wiseft import CurvePoint, select_alpha

SERVED_HEAD = "dual"  # what the product serves; every fine-tuned number below uses it
ZEROSHOT_HEADS = ("default", "concept", "dual")
# The heads every fine-tuned method is read on in results.md: the served one, and the default
# head (FLYP's paper evaluates FLYP on it; issue 24).
READ_HEADS = (SERVED_HEAD, "default")
# WiSE-FT's alpha, chosen on ID validation by each rule (models.wiseft.select_alpha) from the
# stored curve: the row suffix names the rule.
POLICIES = {"tolerance": "+ WiSE-FT (tolerance)", "best_id_val": "+ WiSE-FT (best ID val)"}


def point(run: Mapping[str, Any], alpha: float) -> Mapping[str, Any]:
    for p in run["curve"]:
        if abs(p["alpha"] - alpha) < 1e-9:
            return p["metrics"]
    raise KeyError(f"alpha {alpha} not in the curve of {run['task']}/{run['method']}")


def val_top1(run: Mapping[str, Any], alpha: float, head: str = SERVED_HEAD) -> float:
    return float(point(run, alpha)["val"][head]["top1"])


def ood_splits(metrics: Mapping[str, Any]) -> list[str]:
    return [s for s in metrics if s.startswith("ood")]


def selected_alpha(run: Mapping[str, Any], policy: str, head: str = SERVED_HEAD) -> float:
    """The alpha ``policy`` picks from the run's curve for ``head``, on ID validation only."""
    curve = [CurvePoint(p["alpha"], p["metrics"]) for p in run["curve"]]
    return select_alpha(curve, WiseConfig(selection=policy), split="val", head=head)


def worst_groups(metrics: Mapping[str, Any], head: str = SERVED_HEAD) -> dict[str, float]:
    """Worst-group accuracy on ID test and the lowest over the OOD splits, where groups exist."""
    out = {}
    test = metrics.get("test", {}).get(head, {}).get("worst_group_acc")
    if test is not None:
        out["test"] = float(test)
    oods = [metrics[s][head].get("worst_group_acc") for s in ood_splits(metrics)]
    if any(v is not None for v in oods):
        out["ood"] = min(float(v) for v in oods if v is not None)
    return out


def summary(
    metrics: Mapping[str, Any], head: str = SERVED_HEAD, key: str = "top1"
) -> dict[str, float]:
    """ID val and test, each OOD split, and the mean over OOD splits, for one head."""
    out = {split: float(metrics[split][head][key]) for split in ("val", "test") if split in metrics}
    oods = ood_splits(metrics)
    for split in oods:
        out[split] = float(metrics[split][head][key])
    if oods:
        out["ood_mean"] = statistics.fmean(out[s] for s in oods)
    return out


def run_line(run: Mapping[str, Any]) -> str:
    alpha = 0.0 if run["method"] == "zeroshot" else 1.0
    s = summary(point(run, alpha))
    figures = " ".join(f"{k} {v:.3f}" for k, v in s.items())
    hp = run["hparams"]
    if run["method"] == "zeroshot":
        setting = ""
    elif run["method"].startswith("drm"):
        setting = f" (lr {hp['lr']:g}, lambda {hp['lam']:g}{_pc_mode(hp)})"
    else:
        setting = f" (lr {hp['lr']:g})"
    return (
        f"{run['task']} {run['method']} seed {run['seed']}{setting}: "
        f"{figures} | selected alpha {run['selected_alpha']} | {run['wall_s']:.0f} s"
    )


def merge(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One results document from several (e.g. one process per task, or per group of methods):
    runs concatenated, a run present in several (same task, method and seed) kept once."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    backbones = {p["plan"]["backbone"] for p in parts}
    if len(backbones) > 1:
        raise ValueError(f"results of different backbones cannot be merged: {sorted(backbones)}")
    tasks: dict[str, Any] = {}
    for p in parts:
        tasks.update(p["plan"]["tasks"])
    # Several invocations may hold the same run (zero-shot is evaluated by each): keep the first.
    runs, seen = [], set()
    for r in (r for p in parts for r in p["runs"]):
        if (r["task"], r["method"], r["seed"]) not in seen:
            seen.add((r["task"], r["method"], r["seed"]))
            runs.append(r)
    plan = {**first["plan"], "tasks": tasks}
    # One process per seed: the merged document names every seed it holds.
    plan["seeds"] = sorted({r["seed"] for r in runs if r["method"] != "zeroshot"}) or plan["seeds"]
    # Runs on the 0.05 grid merged with runs on the 0.25 grid: the tables read the alphas all hold.
    grids = [p["plan"].get("alphas") for p in parts]
    if all(g is not None for g in grids):
        plan["alphas"] = [
            a for a in grids[0] if all(any(abs(a - b) < 1e-9 for b in g) for g in grids)
        ]
    return {
        **first,
        "plan": plan,
        "runs": runs,
        # Processes run side by side: the benchmark took as long as the slowest.
        "wall_s": max(p["wall_s"] for p in parts),
        "parts": len(parts),
    }


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def fmt(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {std:.3f}"


def rows_for_task(
    runs: Sequence[Mapping[str, Any]], task: str, heads: Sequence[str] = (SERVED_HEAD,)
) -> list[dict[str, Any]]:
    """Table rows: zero-shot per head, then per method its endpoint and its WiSE-FT pick, read
    on each of ``heads`` (another head than the served one: its name in the row, and the
    rules choose alpha on that head's validation top-1)."""
    mine = [r for r in runs if r["task"] == task]
    rows: list[dict[str, Any]] = []
    for run in (r for r in mine if r["method"] == "zeroshot"):
        metrics = point(run, 0.0)
        for head in ZEROSHOT_HEADS:
            rows.append(_row(f"zero-shot ({head})", [metrics], None, head))
    for method in _ordered(r["method"] for r in mine if r["method"] != "zeroshot"):
        seeds = [r for r in mine if r["method"] == method]
        for head in heads:
            name = method if head == SERVED_HEAD else f"{method} ({head} head)"
            rows.append(_row(name, [point(r, 1.0) for r in seeds], [1.0] * len(seeds), head))
            for policy, suffix in POLICIES.items():
                alphas = [selected_alpha(r, policy, head) for r in seeds]
                picks = [point(r, a) for r, a in zip(seeds, alphas, strict=True)]
                rows.append(_row(f"{name} {suffix}", picks, alphas, head))
    return rows


def _ordered(methods: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for m in methods:
        if m not in seen:
            seen.append(m)
    return seen


def _row(
    name: str,
    per_seed: Sequence[Mapping[str, Any]],
    alphas: Sequence[float] | None,
    head: str = SERVED_HEAD,
) -> dict[str, Any]:
    """One table row from each seed's metrics at the alpha the row stands for."""
    top1 = [summary(m, head) for m in per_seed]
    f1 = [summary(m, head, "macro_f1") for m in per_seed]
    worst = [worst_groups(m, head) for m in per_seed]
    keys = list(top1[0])
    return {
        "name": name,
        "n": len(top1),
        "top1": {k: [t[k] for t in top1] for k in keys},
        "macro_f1": {k: [t[k] for t in f1] for k in keys},
        "worst_group": {k: [w[k] for w in worst] for k in worst[0]},
        "alphas": alphas,
        "has_groups": bool(worst[0]),
    }


def markdown(results: Mapping[str, Any]) -> str:
    plan = results["plan"]
    side_by_side = f", {results['parts']} processes side by side" if results.get("parts") else ""
    lines = [
        f"Backbone `{plan['backbone']}`, seeds {plan['seeds']}, WiSE-FT alphas {plan['alphas']}, "
        f"{'quick' if plan['quick'] else 'full'} run, {results['wall_s'] / 60:.1f} min on "
        f"{results['machine']['cuda'] or 'CPU'}{side_by_side} ({results['created_at']}).",
        "Top-1 of the served (dual) head unless the row names another head (a method's "
        "`(default head)` rows: its own default head, alpha chosen on that head's validation "
        "top-1); mean ± std over "
        "seeds; zero-shot is deterministic (one evaluation). `+ WiSE-FT (tolerance)`: each "
        "seed's alpha is the smallest within one binomial standard error of the best ID "
        "validation top-1; `+ WiSE-FT (best ID val)`: the best (ties to the smaller alpha). "
        "Worst group: the lowest group accuracy on ID test, and the lowest over the OOD splits "
        "(`-` where the task has no groups).",
        "",
    ]
    for task, info in plan["tasks"].items():
        rows = rows_for_task(results["runs"], task, READ_HEADS)
        if not rows:
            continue
        oods = info["ood_splits"]
        header = ["method", "ID val", "ID test", *oods, "OOD mean", "OOD mean macro-F1"]
        header += ["ID worst group", "OOD worst group", "alpha"]
        lines += [
            f"### {task}",
            "",
            info["shift"],
            "",
            _md_row(header),
            _md_row(["---"] * len(header)),
        ]
        for row in rows:
            alpha = "-" if row["alphas"] is None else fmt(row["alphas"]).replace(".000", "")
            cells = [row["name"], *(fmt(row["top1"][s]) for s in ("val", "test", *oods))]
            cells += [fmt(row["top1"]["ood_mean"]), fmt(row["macro_f1"]["ood_mean"])]
            worst = row["worst_group"]
            cells += [fmt(worst[k]) if k in worst else "-" for k in ("test", "ood")] + [alpha]
            lines.append(_md_row(cells))
        lines += ["", _hparams_line(results["runs"], task), ""]
    return "\n".join(lines)


def overview(results: Mapping[str, Any]) -> str:
    """ID test and mean OOD top-1 of the served head per task and method, then the mean over
    tasks (``goal``)."""
    return per_task_overview(results) + "\n" + goal(results)


def goal(results: Mapping[str, Any], baseline: str = "flyp") -> str:
    """Mean over tasks of ID test and OOD top-1, per seed, then mean ± std over seeds; and
    each method's difference to ``baseline`` under the same WiSE-FT rule (the issue's goal:
    DRM + WiSE-FT at least 2 points above FLYP + WiSE-FT in OOD at equal ID, within 0.5)."""
    tasks = list(results["plan"]["tasks"])
    by_task = {t: {r["name"]: r for r in rows_for_task(results["runs"], t)} for t in tasks}
    names = [n for n in by_task[tasks[0]] if all(n in by_task[t] for t in tasks)]
    names = [n for n in names if n == f"zero-shot ({SERVED_HEAD})" or "zero-shot" not in n]
    header = ["method (mean over tasks)", "ID test", "OOD mean", "ID - base", "OOD - base"]
    lines = [_md_row(header), _md_row(["---"] * len(header))]
    for name in names:
        id_, ood = (_task_mean(by_task, tasks, name, k) for k in ("test", "ood_mean"))
        base = _baseline_name(name, baseline)
        if base in names and base != name and len(id_) > 1:
            d_id = [
                a - b for a, b in zip(id_, _task_mean(by_task, tasks, base, "test"), strict=True)
            ]
            d_ood = [
                a - b
                for a, b in zip(ood, _task_mean(by_task, tasks, base, "ood_mean"), strict=True)
            ]
            diffs = [_signed(d_id), _signed(d_ood)]
        else:
            diffs = ["-", "-"]
        lines.append(_md_row([name, fmt(id_), fmt(ood), *diffs]))
    return "\n".join(lines) + "\n"


def _task_mean(
    by_task: Mapping[str, Mapping[str, Mapping[str, Any]]],
    tasks: Sequence[str],
    name: str,
    key: str,
) -> list[float]:
    """Per seed, the mean over tasks (seed s of every task together)."""
    per_task = [by_task[t][name]["top1"][key] for t in tasks]
    n = min(len(v) for v in per_task)
    return [statistics.fmean(v[i] for v in per_task) for i in range(n)]


def _baseline_name(name: str, baseline: str) -> str:
    """The baseline's row under the same WiSE-FT rule as ``name``."""
    for suffix in POLICIES.values():
        if name.endswith(suffix):
            return f"{baseline} {suffix}"
    return baseline


def _signed(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{mean:+.3f}" if len(values) == 1 else f"{mean:+.3f} ± {std:.3f}"


def per_task_overview(results: Mapping[str, Any]) -> str:
    """One table across tasks: ID test and mean OOD top-1 of the served head, per method."""
    tasks = list(results["plan"]["tasks"])
    by_task = {t: {r["name"]: r for r in rows_for_task(results["runs"], t)} for t in tasks}
    served = f"zero-shot ({SERVED_HEAD})"
    names = _ordered(
        n for t in tasks for n in by_task[t] if n == served or not n.startswith("zero-shot")
    )
    header = ["method"] + [f"{t} {what}" for t in tasks for what in ("ID", "OOD")]
    lines = [_md_row(header), _md_row(["---"] * len(header))]
    for name in names:
        cells = [name]
        for t in tasks:
            row = by_task[t].get(name)
            cells += (
                ["-", "-"] if row is None else [fmt(row["top1"][k]) for k in ("test", "ood_mean")]
            )
        lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


def _hparams_line(runs: Sequence[Mapping[str, Any]], task: str) -> str:
    parts = []
    for method in _ordered(
        r["method"] for r in runs if r["task"] == task and r["method"] != "zeroshot"
    ):
        run = next(r for r in runs if r["task"] == task and r["method"] == method)
        hp = run["hparams"]
        lam = f", lambda {hp['lam']:g}{_pc_mode(hp)}" if method.startswith("drm") else ""
        lam += f", preset {hp['preset']}" if "preset" in hp else ""
        walls = [r["wall_s"] for r in runs if r["task"] == task and r["method"] == method]
        parts.append(
            f"{method}: lr {hp['lr']:g}{lam}, {hp['epochs']} epochs, batch {hp['batch_size']}, "
            f"{run['steps']} steps, {statistics.fmean(walls):.0f} s/run"
        )
    return "Hyperparameters: " + "; ".join(parts) + "."


def _pc_mode(hp: Mapping[str, Any]) -> str:
    # Runs from before pc_norm existed used min-max over affinities.
    norm = f", p_c {hp.get('pc_norm', 'affinity')}"
    return norm + (f", p_c {hp['pc_mode']}" if "pc_mode" in hp else "")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def tune_markdown(tuned: Mapping[str, Any]) -> str:
    lines = [
        f"Tuning trials (seed {tuned['seed']}), chosen on ID validation top-1 of the fine-tuned "
        "model (alpha 1, dual head); the OOD splits are not evaluated while tuning. lr is tuned "
        "on flyp and used by every method; lambda on each DRM reading at that lr; ties go to "
        "the smaller value.",
        "",
        "| task | method | lr | lambda | ID val | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for run in tuned["trials"]:
        hp = run["hparams"]
        pick = tuned["chosen"][run["task"]][run["method"]]
        chosen = all(hp[k] == v for k, v in pick.items())
        lam = f"{hp['lam']:g}" if run["method"].startswith("drm") else "-"
        val = f"{val_top1(run, 1.0):.3f}"
        cells = [run["task"], run["method"], f"{hp['lr']:g}", lam, val, "yes" if chosen else ""]
        lines.append(_md_row(cells))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# The effective-robustness plot


def curves(
    runs: Sequence[Mapping[str, Any]], task: str
) -> dict[str, list[tuple[float, float, float]]]:
    """Per method, (alpha, mean ID test, mean OOD) along alpha, averaged over seeds."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for method in _ordered(
        r["method"] for r in runs if r["task"] == task and r["method"] != "zeroshot"
    ):
        seeds = [r for r in runs if r["task"] == task and r["method"] == method]
        # The alphas every seed's curve holds (seeds on the 0.05 and on the 0.25 grid).
        alphas = sorted(set.intersection(*({p["alpha"] for p in r["curve"]} for r in seeds)))
        points = []
        for alpha in alphas:
            s = [summary(point(r, alpha)) for r in seeds]
            points.append(
                (
                    alpha,
                    statistics.fmean(x["test"] for x in s),
                    statistics.fmean(x["ood_mean"] for x in s),
                )
            )
        out[method] = points
    return out


def plot(results: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["plan"]["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.2 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        runs = results["runs"]
        for method, points in curves(runs, task).items():
            xs = [p[1] for p in points]
            ys = [p[2] for p in points]
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=method)
            ax.plot(xs[-1], ys[-1], marker="s", markersize=7, color=line.get_color())
        for run in (r for r in runs if r["task"] == task and r["method"] == "zeroshot"):
            metrics = point(run, 0.0)
            for head, marker in zip(ZEROSHOT_HEADS, ("*", "P", "X"), strict=True):
                s = summary(metrics, head)
                ax.plot(
                    s["test"],
                    s["ood_mean"],
                    marker=marker,
                    markersize=12,
                    linestyle="",
                    color="black",
                    label=f"zero-shot ({head})",
                )
        ax.set_title(task)
        ax.set_xlabel("ID test top-1")
        ax.set_ylabel("OOD top-1 (mean over OOD splits)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(
        "Effective robustness: each curve runs from zero-shot (alpha 0) to the fine-tuned model "
        "(alpha 1, square)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
