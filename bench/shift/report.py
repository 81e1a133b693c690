"""Tables and the effective-robustness plot from ``results.json`` (pure functions of it)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SERVED_HEAD = "dual"  # what the product serves; every fine-tuned number below uses it
ZEROSHOT_HEADS = ("default", "concept", "dual")


def point(run: Mapping[str, Any], alpha: float) -> Mapping[str, Any]:
    for p in run["curve"]:
        if abs(p["alpha"] - alpha) < 1e-9:
            return p["metrics"]
    raise KeyError(f"alpha {alpha} not in the curve of {run['task']}/{run['method']}")


def val_top1(run: Mapping[str, Any], alpha: float, head: str = SERVED_HEAD) -> float:
    return float(point(run, alpha)["val"][head]["top1"])


def ood_splits(metrics: Mapping[str, Any]) -> list[str]:
    return [s for s in metrics if s.startswith("ood")]


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
    """One results document from several (e.g. one process per task): runs concatenated."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    backbones = {p["plan"]["backbone"] for p in parts}
    if len(backbones) > 1:
        raise ValueError(f"results of different backbones cannot be merged: {sorted(backbones)}")
    tasks: dict[str, Any] = {}
    for p in parts:
        tasks.update(p["plan"]["tasks"])
    return {
        **first,
        "plan": {**first["plan"], "tasks": tasks},
        "runs": [r for p in parts for r in p["runs"]],
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


def rows_for_task(runs: Sequence[Mapping[str, Any]], task: str) -> list[dict[str, Any]]:
    """Table rows: zero-shot per head, then per method its endpoint and its WiSE-FT pick."""
    mine = [r for r in runs if r["task"] == task]
    rows: list[dict[str, Any]] = []
    for run in (r for r in mine if r["method"] == "zeroshot"):
        metrics = point(run, 0.0)
        for head in ZEROSHOT_HEADS:
            rows.append(
                _row(
                    f"zero-shot ({head})",
                    [summary(metrics, head)],
                    [summary(metrics, head, "macro_f1")],
                    None,
                    metrics,
                    head,
                )
            )
    for method in _ordered(r["method"] for r in mine if r["method"] != "zeroshot"):
        seeds = [r for r in mine if r["method"] == method]
        ends = [point(r, 1.0) for r in seeds]
        rows.append(
            _row(
                method,
                [summary(m) for m in ends],
                [summary(m, key="macro_f1") for m in ends],
                [1.0] * len(seeds),
                ends[0],
            )
        )
        picks = [point(r, r["selected_alpha"]) for r in seeds]
        alphas = [float(r["selected_alpha"]) for r in seeds]
        rows.append(
            _row(
                f"{method} + WiSE-FT",
                [summary(m) for m in picks],
                [summary(m, key="macro_f1") for m in picks],
                alphas,
                picks[0],
            )
        )
    return rows


def _ordered(methods: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for m in methods:
        if m not in seen:
            seen.append(m)
    return seen


def _row(
    name: str,
    top1: Sequence[Mapping[str, float]],
    f1: Sequence[Mapping[str, float]],
    alphas: Sequence[float] | None,
    example: Mapping[str, Any],
    head: str = SERVED_HEAD,
) -> dict[str, Any]:
    keys = list(top1[0])
    worst = [
        float(example[s][head]["worst_group_acc"])
        for s in ood_splits(example)
        if example[s][head].get("worst_group_acc") is not None
    ]
    return {
        "name": name,
        "n": len(top1),
        "top1": {k: [t[k] for t in top1] for k in keys},
        "macro_f1": {k: [t[k] for t in f1] for k in keys},
        "alphas": alphas,
        "has_groups": bool(worst),
    }


def markdown(results: Mapping[str, Any]) -> str:
    plan = results["plan"]
    side_by_side = f", {results['parts']} processes side by side" if results.get("parts") else ""
    lines = [
        f"Backbone `{plan['backbone']}`, seeds {plan['seeds']}, WiSE-FT alphas {plan['alphas']}, "
        f"{'quick' if plan['quick'] else 'full'} run, {results['wall_s'] / 60:.1f} min on "
        f"{results['machine']['cuda'] or 'CPU'}{side_by_side} ({results['created_at']}).",
        "Top-1 of the served (dual) head unless the row names another head; mean ± std over "
        "seeds; zero-shot is deterministic (one evaluation). `+ WiSE-FT`: each seed's alpha "
        "picked on ID validation.",
        "",
    ]
    for task, info in plan["tasks"].items():
        rows = rows_for_task(results["runs"], task)
        if not rows:
            continue
        oods = info["ood_splits"]
        header = ["method", "ID val", "ID test", *oods, "OOD mean", "OOD mean macro-F1", "alpha"]
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
            cells += [fmt(row["top1"]["ood_mean"]), fmt(row["macro_f1"]["ood_mean"]), alpha]
            lines.append(_md_row(cells))
        lines += ["", _hparams_line(results["runs"], task), ""]
    return "\n".join(lines)


def overview(results: Mapping[str, Any]) -> str:
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
        walls = [r["wall_s"] for r in runs if r["task"] == task and r["method"] == method]
        parts.append(
            f"{method}: lr {hp['lr']:g}{lam}, {hp['epochs']} epochs, batch {hp['batch_size']}, "
            f"{run['steps']} steps, {statistics.fmean(walls):.0f} s/run"
        )
    return "Hyperparameters: " + "; ".join(parts) + "."


def _pc_mode(hp: Mapping[str, Any]) -> str:
    return f", p_c {hp['pc_mode']}" if "pc_mode" in hp else ""


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def tune_markdown(tuned: Mapping[str, Any]) -> str:
    lines = [
        f"Tuning trials (seed {tuned['seed']}), chosen on ID validation top-1 of the fine-tuned "
        "model (alpha 1, dual head); the OOD splits are not evaluated while tuning.",
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
        alphas = sorted({p["alpha"] for p in seeds[0]["curve"]})
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
