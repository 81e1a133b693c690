"""RCS_PREDICT_ENGINE=auto (the default): each model is timed in torch and in ONNX Runtime over
its verified export when it loads, and served by ONNX Runtime only where that is faster by
``MIN_ENGINE_SPEEDUP``; one process of several exports a version at a time."""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from models.artifacts import card_digest, save_artifact
from service.context import AppContext
from service.predict import cache
from service.predict.onnx import ensure_export, export_path
from service.predict.service import resolve
from service.settings import Settings
from tests.models.test_onnx_export import classifier_for
from tests.service.support import b64, png_bytes, register_artifact


def test_auto_is_the_default_engine() -> None:
    assert Settings.model_fields["predict_engine"].default == "auto"


@pytest.mark.parametrize(
    ("torch_s", "onnx_s", "chosen", "threads"),
    [
        (0.010, {1: 0.004, 2: 0.006}, "onnxruntime", 1),  # fused: faster on one thread
        (0.010, {1: 0.009}, "torch", None),  # 1.1x is not worth a second copy of the weights
        (0.010, {1: 0.008, 2: 0.003}, "onnxruntime", 2),  # more threads earn their keep
        (0.010, {1: 0.004, 2: 0.0035}, "onnxruntime", 1),  # by 1.14x they do not
        (0.003, {1: 0.004, 2: 0.006}, "torch", None),  # slower than torch
    ],
)
def test_the_engine_timed_faster_by_the_margin_serves(
    artifact_folder: Path,
    torch_s: float,
    onnx_s: dict[int, float],
    chosen: str,
    threads: int | None,
) -> None:
    model = cache.load("m", 1, artifact_folder, "cpu")
    runners: dict[int, Any] = {n: SimpleNamespace(threads=n, path=None) for n in onnx_s}
    now = [0.0]
    seen: list[str] = []

    def forward(loaded: cache.LoadedModel, inputs: torch.Tensor) -> torch.Tensor:
        runner = loaded.runner
        seen.append("torch" if runner is None else f"onnxruntime/{runner.threads}")
        per_image = torch_s if runner is None else onnx_s[runner.threads]
        now[0] += per_image * inputs.shape[0]  # a fake clock
        return inputs

    engine, seconds = cache.calibrate_engine(model, runners, forward, clock=lambda: now[0])
    assert engine == chosen == model.engine
    assert (model.runner.threads if model.runner is not None else None) == threads
    n = cache.CALIBRATION_BATCH
    assert seconds == pytest.approx(
        {"torch": torch_s * n, **{f"onnxruntime/{k}": v * n for k, v in onnx_s.items()}}
    )
    settings = ["torch", *(f"onnxruntime/{k}" for k in sorted(onnx_s))]
    per_setting = 1 + cache.CALIBRATION_PASSES  # one untimed pass, then the timed ones
    assert seen == [setting for setting in settings for _ in range(per_setting)]


def auto_cache(tmp_path: Path, threads: int = 0) -> cache.ModelCache:
    return cache.ModelCache(1 << 40, engine=cache.Engine("auto", tmp_path / "onnx", threads))


def test_auto_exports_the_version_once_and_serves_it_where_the_timing_says(
    artifact_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inputs = torch.rand(
        3, 3, *cache.load("m", 1, artifact_folder, "cpu").classifier.backbone.image_size
    )
    monkeypatch.setattr(cache, "MIN_ENGINE_SPEEDUP", 0.0)  # any timing: ONNX Runtime
    with caplog.at_level(logging.INFO, logger="service.predict.cache"):
        onnx = auto_cache(tmp_path).get("m", 1, lambda: artifact_folder)
    export = export_path(tmp_path / "onnx", card_digest(artifact_folder))
    assert onnx.engine == "onnxruntime" and onnx.runner is not None
    assert onnx.runner.path == export and export.is_file()
    assert onnx.nbytes == cache.model_bytes(onnx.classifier) + export.stat().st_size
    assert "m/1: passes run in onnxruntime on" in caplog.text and "torch " in caplog.text

    made = export.stat().st_mtime_ns
    monkeypatch.setattr(cache, "MIN_ENGINE_SPEEDUP", float("inf"))  # any timing: torch
    kept = auto_cache(tmp_path).get("m", 1, lambda: artifact_folder)
    assert kept.engine == "torch" and kept.nbytes == cache.model_bytes(kept.classifier)
    assert export.stat().st_mtime_ns == made  # the export was reused, not made again
    # Either engine gives the same answers (the export is verified against torch).
    torch.testing.assert_close(cache.run(onnx, inputs), cache.run(kept, inputs), atol=1e-4, rtol=0)


def test_auto_with_a_set_thread_count_times_onnxruntime_on_that_count_alone(
    artifact_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed: list[list[int]] = []
    torch_given: list[bool] = []
    real = cache.calibrate_engine

    def recording(model: cache.LoadedModel, runners: dict[int, Any], *a: Any, **kw: Any) -> Any:
        timed.append(sorted(runners))
        torch_given.append(kw.get("torch_s") is not None)
        return real(model, runners, *a, **kw)

    monkeypatch.setattr(cache, "calibrate_engine", recording)
    auto_cache(tmp_path, threads=1).get("m", 1, lambda: artifact_folder)
    two = auto_cache(tmp_path)
    two.available_threads = 2
    two.get("m", 1, lambda: artifact_folder)
    assert timed == [[1], [1, 2]]
    # Where torch's threads were just timed, that time serves the engine choice too.
    assert torch_given == [False, True]


def test_torch_and_onnxruntime_settings_are_not_timed(
    artifact_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def untouched(*_: object, **__: object) -> None:
        raise AssertionError("timed")

    monkeypatch.setattr(cache, "calibrate_engine", untouched)
    for name in ("torch", "onnxruntime"):
        models = cache.ModelCache(1 << 40, engine=cache.Engine(name, tmp_path / "onnx", 1))
        assert models.get("m", 1, lambda: artifact_folder).engine == name


def test_auto_serves_with_torch_what_cannot_be_exported_or_timed(
    artifact_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    vit = save_artifact(tmp_path / "vit", classifier_for("test-onnx-timm-vit"), {})
    with caplog.at_level(logging.WARNING, logger="service.predict.cache"):
        assert auto_cache(tmp_path).get("vit", 1, lambda: vit).engine == "torch"
    assert "vit/1: served by torch; ONNX Runtime was not tried" in caplog.text
    assert "cannot be exported" in caplog.text

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cache, "calibrate_engine", broken)
    model = auto_cache(tmp_path).get("m", 1, lambda: artifact_folder)
    assert model.engine == "torch" and model.runner is None


def test_a_process_waits_for_anothers_export_of_the_same_version_and_reuses_it(
    artifact_folder: Path, tmp_path: Path
) -> None:
    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    digest = card_digest(artifact_folder)
    target = export_path(onnx_dir, digest)
    made: list[str] = []

    def classifier() -> Any:
        made.append("exported")
        return cache.load("m", 1, artifact_folder, "cpu").classifier

    # Another process's export in progress: its lock held through another open file, which
    # flock treats as another holder even within this process.
    with open(target.with_name(target.name + ".lock"), "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        waiter = threading.Thread(target=ensure_export, args=(onnx_dir, digest, classifier))
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not target.exists()
        target.write_bytes(b"the other process's export")
    waiter.join(timeout=60)
    assert not waiter.is_alive() and made == []
    assert target.read_bytes() == b"the other process's export"


def test_predict_under_the_default_engine_exports_the_version_and_answers(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "e" * 24)
    answer = client.post(
        "/predict", json={"model": "shapes", "images": [b64(png_bytes((9, 9, 9)))]}
    )
    assert answer.status_code == 200, answer.text
    model = resolve(ctx, "shapes")
    assert ctx.settings.predict_engine == "auto" and model.engine in ("torch", "onnxruntime")
    assert export_path(ctx.settings.onnx_dir, card_digest(artifact_folder)).is_file()


def test_a_versions_export_goes_with_the_last_version_of_its_bytes(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        for job in ("a", "b"):  # the same bytes registered twice: one export
            register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + job * 24)
    image = {"model": "shapes/1", "images": [b64(png_bytes((9, 9, 9)))]}
    assert client.post("/predict", json=image).status_code == 200
    export = export_path(ctx.settings.onnx_dir, card_digest(artifact_folder))
    assert export.is_file()
    assert client.delete("/models/shapes/versions/1").status_code == 204
    assert export.is_file()  # version 2 has the same bytes
    assert client.delete("/models/shapes/versions/2").status_code == 204
    assert not export.exists() and not export.with_name(export.name + ".lock").exists()


def test_metrics_name_each_loaded_models_engine_and_threads(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "f" * 24)
    assert "rcs_model_loaded{" not in client.get("/metrics").text
    image = {"model": "shapes", "images": [b64(png_bytes((9, 9, 9)))]}
    assert client.post("/predict", json=image).status_code == 200
    model = resolve(ctx, "shapes")
    threads = model.pass_threads or "default"
    expected = (
        f'rcs_model_loaded{{engine="{model.engine}",model="shapes",threads="{threads}",'
        'version="1"} 1.0'
    )
    assert expected in client.get("/metrics").text
    ctx.models.evict("shapes", 1)
    assert "rcs_model_loaded{" not in client.get("/metrics").text
