"""A model version's robustness report, from its run card alone, and the effective-robustness plot.

The card keeps the whole WiSE-FT curve (every alpha, every split, every head), so the report is a
pure function of it: the zero-shot baseline is the curve at alpha 0, the fine-tuned model at
alpha 1, the served model at the selected alpha. "Effective robustness" is read as in Taori et
al. and WiSE-FT: out-of-distribution accuracy plotted against in-distribution accuracy, each
alpha one point; a fine-tuned model is robust where its curve lies above the zero-shot point.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from models.errors import ModelsError

SERVED_HEAD = "dual"  # what the artifact serves (models.heads), so what the report leads with
HEADS = ("default", "concept", "dual")
FORMAT = "robust-clip-report/1"


@dataclass(frozen=True)
class ErPoint:
    """One alpha of the curve: ID top-1 (test split, else validation) and mean OOD top-1."""

    alpha: float
    id_top1: float
    ood_top1: float | None


def ood_splits(card: Mapping[str, Any]) -> list[str]:
    data = (card.get("config") or {}).get("data") or {}
    curve = (card.get("wise") or {}).get("curve") or []
    evaluated = set(curve[0]["metrics"]) if curve else set()
    return [s for s in data.get("ood_splits") or [] if s in evaluated]


def id_split(card: Mapping[str, Any]) -> str:
    """The split ID accuracy is read on: ``test`` where the dataset has one, else validation."""
    curve = (card.get("wise") or {}).get("curve") or []
    evaluated = set(curve[0]["metrics"]) if curve else set()
    data = (card.get("config") or {}).get("data") or {}
    return "test" if "test" in evaluated else str(data.get("val_split", "val"))


def served_head(card: Mapping[str, Any]) -> str:
    """The head the version serves: the one its WiSE-FT rule chose (``wise.heads``), else the
    dual head of cards written before heads were chosen."""
    return str((card.get("wise") or {}).get("selected_head") or SERVED_HEAD)


def er_points(card: Mapping[str, Any], head: str | None = None) -> list[ErPoint]:
    """The curve as (alpha, ID top-1, mean OOD top-1) points, alpha ascending, of ``head``
    (default: the served one)."""
    head = head or served_head(card)
    ident, oods = id_split(card), ood_splits(card)
    points = []
    for p in sorted((card.get("wise") or {}).get("curve") or [], key=lambda p: p["alpha"]):
        metrics = p["metrics"]
        ood = [float(metrics[s][head]["top1"]) for s in oods]
        points.append(
            ErPoint(
                float(p["alpha"]),
                float(metrics[ident][head]["top1"]),
                sum(ood) / len(ood) if ood else None,
            )
        )
    return points


def _brief(by_head: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("n", "top1", "macro_f1", "worst_group_acc", "ece")
    return {head: {k: by_head[head].get(k) for k in keep} for head in HEADS if head in by_head}


def _at(card: Mapping[str, Any], alpha: float) -> Mapping[str, Any]:
    for p in (card.get("wise") or {}).get("curve") or []:
        if abs(float(p["alpha"]) - alpha) < 1e-9:
            return dict(p["metrics"])
    return {}


def robustness_report(card: Mapping[str, Any]) -> dict[str, Any]:
    """The report of the version ``card`` describes (JSON-ready)."""
    wise = card.get("wise") or {}
    if not wise.get("curve"):
        raise ModelsError("the run card has no WiSE-FT curve to report on")
    selected = float(wise["selected_alpha"])
    ident, oods = id_split(card), ood_splits(card)
    head = served_head(card)
    points = er_points(card, head)
    by_alpha = {p.alpha: p for p in points}
    base = by_alpha.get(0.0)
    chosen = by_alpha[selected]
    served = _at(card, selected)

    def gain(p: ErPoint) -> dict[str, float | None]:
        if base is None:
            return {"id": None, "ood": None}
        ood = None
        if p.ood_top1 is not None and base.ood_top1 is not None:
            ood = round(p.ood_top1 - base.ood_top1, 6)
        return {"id": round(p.id_top1 - base.id_top1, 6), "ood": ood}

    return {
        "format": FORMAT,
        "served_head": head,
        "id_split": ident,
        "ood_splits": oods,
        "objective": card.get("objective"),
        "selection": {
            "rule": wise.get("selection"),
            "metric": wise.get("metric"),
            "alpha": selected,
            "head": head,
        },
        "zeroshot": {split: _brief(m) for split, m in _at(card, 0.0).items()},
        "selected": {split: _brief(m) for split, m in served.items()},
        "finetuned": {split: _brief(m) for split, m in _at(card, 1.0).items()},
        # Each alpha: ID and mean OOD top-1 of the served head, and every split and head.
        "curve": [
            {
                **asdict(p),
                "splits": {split: _brief(m) for split, m in _at(card, p.alpha).items()},
            }
            for p in points
        ],
        # The served model against zero-shot (alpha 0): what fine-tuning gained ID and OOD.
        "gain_over_zeroshot": gain(chosen),
        "per_class_acc": {
            split: dict(m[head].get("per_class_acc") or {})
            for split, m in served.items()
            if head in m
        },
        # Before training: how well the frozen concept head recognises each class from its
        # descriptions on the training images (models.diagnostics), weak classes flagged.
        "description_diagnostics": card.get("description_diagnostics"),
        "worst_group_acc": {
            split: m[head].get("worst_group_acc")
            for split, m in served.items()
            if head in m and m[head].get("worst_group_acc") is not None
        },
    }


def plot_effective_robustness(
    series: Mapping[str, Sequence[ErPoint]],
    out: Path | IO[bytes],
    selected: Mapping[str, float] | None = None,
    zeroshot: ErPoint | None = None,
    title: str = "",
) -> None:
    """OOD vs ID top-1 along alpha, one line per model; the selected alpha ringed, zero-shot a
    star."""
    # The object API, not pyplot: the API draws in its thread pool, and pyplot's global state
    # is not thread-safe.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.subplots()
    for name, points in series.items():
        drawn = [(p, p.ood_top1) for p in points if p.ood_top1 is not None]
        if not drawn:
            continue
        (line,) = ax.plot(
            [p.id_top1 for p, _ in drawn],
            [ood for _, ood in drawn],
            marker="o",
            markersize=4,
            label=name,
        )
        for p, ood in drawn:
            ax.annotate(f"{p.alpha:g}", (p.id_top1, ood), fontsize=6, alpha=0.6)
        alpha = (selected or {}).get(name)
        ring = [(p, ood) for p, ood in drawn if alpha is not None and abs(p.alpha - alpha) < 1e-9]
        for p, ood in ring[:1]:
            ax.plot(
                p.id_top1,
                ood,
                marker="o",
                markersize=13,
                markerfacecolor="none",
                markeredgecolor=line.get_color(),
                markeredgewidth=2,
            )
    if zeroshot is not None and zeroshot.ood_top1 is not None:
        ax.plot(
            zeroshot.id_top1,
            zeroshot.ood_top1,
            marker="*",
            markersize=16,
            color="black",
            linestyle="",
            label="zero-shot",
        )
    ax.set_xlabel("ID top-1")
    ax.set_ylabel("OOD top-1 (mean over OOD splits)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(
        title or "Effective robustness (numbers: WiSE-FT alpha; ringed: selected)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110, format="png")


def report_png(card: Mapping[str, Any], name: str) -> bytes:
    """The effective-robustness plot of one version, as PNG bytes."""
    points = er_points(card)
    zeroshot = next((p for p in points if p.alpha == 0.0), None)
    selected = float((card.get("wise") or {}).get("selected_alpha", 1.0))
    buffer = io.BytesIO()
    plot_effective_robustness(
        {name: points}, buffer, selected={name: selected}, zeroshot=zeroshot, title=name
    )
    return buffer.getvalue()
