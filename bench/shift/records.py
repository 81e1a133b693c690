"""Per-image records of a benchmark run: what an offline study of alpha rules and heads needs.

Every run keeps, for each alpha of its WiSE-FT curve and each head (default, concept, dual),
whether the head is right on each image of every evaluated split (bit-packed hex) and, on ID
validation, the true class's probability (float16, base64): ``models.metrics.image_record``,
produced by the evaluation itself (``finetune(record_images=True)``), so no image is scored
twice. In a run (``results.json``):

    "images": {"alphas": [0.0, 0.05, ...],
               "splits": {"val": {"n": 300, "dual": {"hits": [hex per alpha],
                                                     "true_prob": [base64 per alpha]}, ...},
                          "test": {"n": 400, "dual": {"hits": [...]}, ...}, ...}}

``curve_points`` puts them back into the curve's metrics, so ``models.wiseft.select`` (the
service's own rules) runs on a stored run exactly as it ran in the pipeline.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.metrics import unpack_hits
from models.wiseft import CurvePoint

IMAGES = "images"


def split_images(
    curve: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A card's curve without its per-image records, and the records as a run keeps them
    (None when the curve has none)."""
    alphas = [float(p["alpha"]) for p in curve]
    splits: dict[str, Any] = {}
    stripped = []
    for p in curve:
        metrics: dict[str, Any] = {}
        for split, by_head in p["metrics"].items():
            metrics[split] = {}
            for head, values in by_head.items():
                values = dict(values)
                record = values.pop(IMAGES, None)
                metrics[split][head] = values
                if record is None:
                    continue
                entry = splits.setdefault(split, {"n": record["n"]})
                kept = entry.setdefault(head, {})
                for key in ("hits", "true_prob"):
                    if key in record:
                        kept.setdefault(key, []).append(record[key])
        stripped.append({**p, "metrics": metrics})
    if not splits:
        return stripped, None
    for split, entry in splits.items():
        for head, kept in entry.items():
            if head == "n":
                continue
            for key, values in kept.items():
                if len(values) != len(alphas):
                    raise ValueError(
                        f"{split}/{head}: {key} at {len(values)} of {len(alphas)} alphas"
                    )
    return stripped, {"alphas": alphas, "splits": splits}


def record_at(run: Mapping[str, Any], alpha: float, split: str, head: str) -> dict[str, Any]:
    """The per-image record of ``head`` on ``split`` at ``alpha`` (KeyError if not kept)."""
    images = run.get(IMAGES)
    if images is None:
        raise KeyError(
            f"{run['task']}/{run['method']} seed {run['seed']} kept no per-image records"
        )
    index = _index(images["alphas"], alpha)
    entry = images["splits"][split]
    kept = entry[head]
    record = {"n": entry["n"], "hits": kept["hits"][index]}
    if "true_prob" in kept:
        record["true_prob"] = kept["true_prob"][index]
    return record


def hits_at(run: Mapping[str, Any], alpha: float, split: str, head: str) -> np.ndarray:
    return unpack_hits(record_at(run, alpha, split, head))


def _index(alphas: Sequence[float], alpha: float) -> int:
    for i, a in enumerate(alphas):
        if abs(a - alpha) < 1e-9:
            return i
    raise KeyError(f"alpha {alpha} not among the recorded {list(alphas)}")


def curve_points(run: Mapping[str, Any], alphas: Sequence[float] | None = None) -> list[CurvePoint]:
    """The run's curve with each head's per-image records back in its metrics, restricted to
    ``alphas`` (None: every recorded alpha); what ``models.wiseft.select`` reads."""
    images = run.get(IMAGES) or {"alphas": [], "splits": {}}
    points = []
    for p in run["curve"]:
        alpha = float(p["alpha"])
        if alphas is not None and not any(abs(alpha - a) < 1e-9 for a in alphas):
            continue
        metrics = {
            split: {h: dict(m) for h, m in by_head.items()}
            for split, by_head in p["metrics"].items()
        }
        if any(abs(alpha - a) < 1e-9 for a in images["alphas"]):
            for split, entry in images["splits"].items():
                for head in (h for h in entry if h != "n"):
                    if split in metrics and head in metrics[split]:
                        metrics[split][head][IMAGES] = record_at(run, alpha, split, head)
        points.append(CurvePoint(alpha, metrics))
    return points


def served_hits(run: Mapping[str, Any], head: str = "dual") -> dict[str, dict[str, Any]]:
    """Per-image hits of ``head`` on ID test and the OOD splits at the selected alpha and at
    alpha 1, as ``bench.shift.descriptions`` compares them (from the records: no new pass)."""
    images = run[IMAGES]
    splits = [s for s in images["splits"] if s == "test" or s.startswith("ood")]
    out = {}
    for where, alpha in (("selected", run["selected_alpha"]), ("alpha1", 1.0)):
        if where == "alpha1" and not any(abs(a - 1.0) < 1e-9 for a in images["alphas"]):
            alpha = run["selected_alpha"]  # zero-shot: one model, no fine-tuned end
        out[where] = {
            s: {"n": images["splits"][s]["n"], "hits": record_at(run, alpha, s, head)["hits"]}
            for s in splits
        }
    return out


def load_results(path: Path) -> dict[str, Any]:
    """A ``results.json``, or its gzip-compressed copy (``.gz``: what gets committed)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, EOFError) as exc:
        raise SystemExit(f"{path}: not a readable results file ({exc})") from None
    if not isinstance(data, dict) or "runs" not in data or "plan" not in data:
        raise SystemExit(f"{path}: not a bench.shift results file (no plan and runs)")
    return data


def write_results(results: Mapping[str, Any], path: Path) -> None:
    """Compact JSON, gzip-compressed (mtime 0: the same results give the same bytes)."""
    text = json.dumps(results, separators=(",", ":")) + "\n"
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
        fh.write(text.encode("utf-8"))
