"""RCS_PREDICT_ENGINE_BY_MODEL: one model on ONNX Runtime, another on torch, in one process;
a value that names no engine is refused at start, naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.context import AppContext
from service.predict.service import resolve
from service.settings import Settings
from tests.service.support import b64, png_bytes, register_artifact

pytestmark = pytest.mark.parametrize(
    "settings_overrides",
    [{"predict_engine": "torch", "predict_engine_by_model": {"edge": "onnxruntime"}}],
)


def test_each_model_runs_on_its_engine(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        for name, job in (("shapes", "d"), ("edge", "e")):
            register_artifact(session, ctx.store, name, artifact_folder, "ftjob-" + job * 24)
    answers = {}
    for name in ("shapes", "edge"):
        answer = client.post("/predict", json={"model": name, "images": [b64(png_bytes())]})
        assert answer.status_code == 200, answer.text
        answers[name] = {x["label"]: x["probability"] for x in answer.json()["data"][0]["labels"]}
    assert resolve(ctx, "shapes").engine == "torch"
    assert resolve(ctx, "edge").engine == "onnxruntime"
    # The same artifact under both names: the same answer from either engine.
    assert answers["shapes"].keys() == answers["edge"].keys()
    for label, p in answers["shapes"].items():
        assert abs(answers["edge"][label] - p) < 1e-4


def test_the_setting_reads_pairs_json_and_empty_and_refuses_what_names_no_engine(
    settings_overrides: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    for text, expected in [
        ("", {}),  # compose passes an unset variable as an empty string
        ("edge=onnxruntime, cams=torch", {"edge": "onnxruntime", "cams": "torch"}),
        ('{"edge": "onnxruntime"}', {"edge": "onnxruntime"}),
    ]:
        monkeypatch.setenv("RCS_PREDICT_ENGINE_BY_MODEL", text)
        assert Settings().predict_engine_by_model == expected
    for text in ("edge=tensorrt", "edge", '{"edge": '):
        monkeypatch.setenv("RCS_PREDICT_ENGINE_BY_MODEL", text)
        with pytest.raises(ValidationError, match="predict_engine_by_model"):
            Settings()
