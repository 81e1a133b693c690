"""The monitoring benchmark's baselines, on the windows and features ``bench/monitor.py`` wrote:
alibi-detect's ``MMDDrift`` (PyTorch backend) on the same projected embeddings against the
same reference points, and NannyML's CBPE on the same served probabilities, calibrated on the
same validation split.

Run by ``bench/monitor.py --baselines-python PY`` in a virtual environment that has both
(alibi-detect 0.13 pins numpy < 2, which the project's environment cannot take):

    PY -m bench.monitor_baselines OUT_DIR OUT_DIR/baselines.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

STAT_COLUMNS = 6  # models.monitoring.STAT_COLUMNS: the projected embedding follows them
MMD_PERMUTATIONS = 100  # alibi-detect's default
# alibi-detect's MMD takes about a second a window on 2 CPU cores: it runs on the windows of
# MMD_SIZE images only, the first MMD_ID ID windows and MMD_OTHER of each other condition.
MMD_SIZE, MMD_ID, MMD_OTHER = 256, 30, 10
CLASSES = 10


def main(folder: str, out: str) -> int:
    import alibi_detect
    import nannyml

    arrays = np.load(Path(folder) / "features.npz")
    windows = [json.loads(line) for line in (Path(folder) / "windows.jsonl").open()]
    results: list[dict[str, Any]] = [
        {k: w[k] for k in ("task", "size", "condition", "window")} | {"baselines": {}}
        for w in windows
    ]
    started = time.perf_counter()
    mmd(arrays, windows, results)
    mmd_s = time.perf_counter() - started
    started = time.perf_counter()
    cbpe(arrays, windows, results)
    cbpe_s = time.perf_counter() - started
    Path(out).write_text(
        json.dumps(
            {
                "versions": {
                    "alibi-detect": alibi_detect.__version__,
                    "nannyml": nannyml.__version__,
                },
                "mmd_permutations": MMD_PERMUTATIONS,
                "mmd_windows": {"size": MMD_SIZE, "id": MMD_ID, "other": MMD_OTHER},
                "seconds": {"alibi_mmd": mmd_s, "cbpe": cbpe_s},
                "windows": results,
            }
        )
    )
    return 0


def _window(arrays: Any, w: dict[str, Any], key: str) -> np.ndarray:
    task, split = w["task"], w["split"] or "test"
    return np.concatenate(
        [
            arrays[f"{task}/test/{key}"][w["id_index"]],
            arrays[f"{task}/{split}/{key}"][w["ood_index"]],
        ]
    )


def mmd(arrays: Any, windows: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    from alibi_detect.cd import MMDDrift

    detectors: dict[str, Any] = {}
    for w, r in zip(windows, results, strict=True):
        task = w["task"]
        limit = MMD_ID if w["condition"] == "id" else MMD_OTHER
        if w["size"] != MMD_SIZE or w["window"] >= limit:
            continue
        if task not in detectors:
            reference = arrays[f"{task}/reference"].astype(np.float32)
            detectors[task] = MMDDrift(
                reference, backend="pytorch", p_val=0.01, n_permutations=MMD_PERMUTATIONS
            )
        x = _window(arrays, w, "stats")[:, STAT_COLUMNS:].astype(np.float32)
        answer = detectors[task].predict(x, return_p_val=True, return_distance=True)["data"]
        r["baselines"]["mmd_p_value"] = float(answer["p_val"])
        r["baselines"]["mmd_distance"] = float(answer["distance"])


def _frame(probs: np.ndarray, labels: np.ndarray) -> Any:
    import pandas as pd

    frame = pd.DataFrame({f"p{k}": probs[:, k] for k in range(probs.shape[1])})
    frame["y_pred"] = probs.argmax(1)
    frame["y_true"] = labels
    return frame


def cbpe(arrays: Any, windows: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    import nannyml as nml

    groups: dict[tuple[str, int], list[int]] = {}
    for i, w in enumerate(windows):
        groups.setdefault((w["task"], w["size"]), []).append(i)
    for (task, size), indices in groups.items():
        probs = arrays[f"{task}/val/probs"]
        reference = _frame(probs, arrays[f"{task}/val/labels"])
        estimator = nml.CBPE(
            y_pred_proba={k: f"p{k}" for k in range(probs.shape[1])},
            y_pred="y_pred",
            y_true="y_true",
            problem_type="classification_multiclass",
            metrics=["accuracy"],
            chunk_size=size,
        )
        estimator.fit(reference)
        analysis = _frame(
            np.concatenate([_window(arrays, windows[i], "probs") for i in indices]),
            np.concatenate([_window(arrays, windows[i], "labels") for i in indices]),
        ).drop(columns=["y_true"])
        table = estimator.estimate(analysis).filter(period="analysis").to_df()
        values = table[("accuracy", "value")].to_numpy()
        if len(values) != len(indices):
            raise SystemExit(f"CBPE gave {len(values)} chunks for {len(indices)} windows")
        for i, value in zip(indices, values, strict=True):
            results[i]["baselines"]["cbpe"] = float(value)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
