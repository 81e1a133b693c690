"""The performance scripts: goal checks of bench/serve.py, bench/gpu_check.sh's CPU dry run
(the same steps as on a GPU, with the tiny model), which must produce every table, and
bench/batch_cost.py's table, and bench/engine_choice.py's loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import serve

ROOT = Path(__file__).resolve().parents[2]


def _row(mode: str, clients: int, rate: float, p50: float, p99: float, errors: int = 0) -> Any:
    return {
        "mode": mode,
        "clients": clients,
        "images_per_s": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": errors,
    }


def test_goals_are_checked_against_the_same_run() -> None:
    result = {
        "limit": {"images_per_s": 100.0},
        "rows": [
            _row("batched", 32, 85.0, 100.0, 300.0),
            _row("naive", 32, 20.0, 400.0, 900.0),
        ],
    }
    assert serve.goals(result) == [
        "- met: 32 clients at 0.85 of the own limit (goal >= 0.8)",
        "- met: 4.25x the naive baseline at 32 clients (goal >= 3x)",
        "- met: p99/p50 at 32 clients 3.00 (goal < 4)",
        "- met: errors at every level: 0 (goal 0)",
    ]
    result["rows"] = [
        _row("batched", 32, 50.0, 100.0, 500.0),
        _row("naive", 32, 20.0, 400.0, 900.0, errors=2),
    ]
    assert [line.split(":")[0] for line in serve.goals(result)] == ["- MISSED"] * 4


def test_percentiles_interpolate_between_samples() -> None:
    values = [float(v) for v in range(1, 101)]
    assert serve._percentile(values, 50) == pytest.approx(50.5)
    assert serve._percentile(values, 99) == pytest.approx(99.01)
    assert serve._percentile([3.0], 99) == 3.0


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--device", "cpu", "--tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    assert "| flyp |" in summary and "| drm (weight, cached p_c) |" in summary
    assert "training images/s" in summary
    train = json.loads((out / "train_step.json").read_text())["results"]
    assert set(train) == {"flyp", "drm (weight, cached p_c)"}
    result = json.loads((out / "serve.json").read_text())["results"][0]
    assert result["arch"] == "test-tiny-vit" and result["limit"]["images_per_s"] > 0
    rows = {(r["mode"], r["clients"]): r for r in result["rows"]}
    assert set(rows) == {(m, c) for m in ("batched", "naive") for c in (1, 8)}
    assert all(r["errors"] == 0 and r["requests"] == 32 for r in rows.values())
    # Batching did batch: 8 concurrent clients shared passes, each naive request had its own.
    assert rows[("batched", 8)]["mean_batch"] > 1.0
    assert rows[("naive", 8)]["mean_batch"] == 1.0
    assert result["cache"]["reload_s"] > 0


def test_the_decode_benchmark_times_and_compares_both_decodes() -> None:
    cmd = ["bench/decode.py", "--model", "test-tiny-vit", "--sizes", "640x480", "--seconds", "0.05"]
    done = subprocess.run(
        [sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 640x480 |"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert float(cells[1]) > 0 and float(cells[2]) > 0 and float(cells[4]) >= 0
    assert cells[5] in ("yes", "NO")  # a random-init model: only that it was compared


@pytest.mark.slow
def test_batch_cost_reports_every_batch_size(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    cmd = [sys.executable, "bench/batch_cost.py", "--model", "test-tiny-vit", "--batches", "1,4"]
    cmd += ["--seconds", "0.2", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["threads"] == 1 and [row["batch"] for row in result["rows"]] == [1, 4]
    assert all(row["images_per_s"] > 0 and row["cpu_ms_per_image"] > 0 for row in result["rows"])
    assert "batch   4:" in done.stdout


@pytest.mark.slow
def test_engine_choice_loads_each_model_twice_and_quotes_the_choice(tmp_path: Path) -> None:
    out = tmp_path / "choice.json"
    cmd = [sys.executable, "bench/engine_choice.py", "test-tiny-vit", "--json", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(out.read_text())["results"]
    assert (first["load"], second["load"]) == ("first (exports)", "second (export cached)")
    for row in (first, second):
        assert row["engine"] in ("torch", "onnxruntime") and row["seconds"] > 0
        (choice,) = [line for line in row["log"] if ": passes run in " in line]
        assert choice.startswith(f"bench/1: passes run in {row['engine']}")
    assert "export 0.0 s" in [line for line in second["log"] if "passes run in" in line][0]
    assert "test-tiny-vit, first (exports) load:" in done.stdout
