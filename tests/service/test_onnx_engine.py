"""RCS_PREDICT_ENGINE=onnxruntime: /predict answers as torch does, from the version's export
cached by digest; GET /models/{name}/versions/{v}/onnx hands out that verified file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from models.artifacts import card_digest, save_artifact
from models.monitoring import served_pass, unpack
from service.context import AppContext
from service.predict.cache import to_input
from service.predict.service import ImageInput, forward, preprocess, resolve
from tests.models.test_onnx_export import classifier_for, run_standalone
from tests.service.support import b64, png_bytes, register_artifact

COLORS = [(200, 60, 60), (20, 200, 90), (30, 40, 220), (240, 240, 10)]
pytestmark = pytest.mark.parametrize("settings_overrides", [{"predict_engine": "onnxruntime"}])


@pytest.fixture
def shapes(ctx: AppContext, artifact_folder: Path) -> int:
    with ctx.sessions() as session:
        return register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "c" * 24)


def predicted(client: TestClient, ref: str = "shapes") -> list[dict[str, float]]:
    images = [b64(png_bytes(c)) for c in COLORS]
    answer = client.post("/predict", json={"model": ref, "images": images, "top_k": 4})
    assert answer.status_code == 200, answer.text
    return [{x["label"]: x["probability"] for x in d["labels"]} for d in answer.json()["data"]]


def test_onnxruntime_engine_answers_as_torch(
    client: TestClient, ctx: AppContext, shapes: int, artifact_folder: Path
) -> None:
    answers = predicted(client)
    model = resolve(ctx, "shapes")
    assert model.engine == "onnxruntime"
    assert (ctx.settings.onnx_dir / f"{card_digest(artifact_folder)}.onnx").is_file()
    images = [ImageInput(png_bytes(c), None, "x") for c in COLORS]
    with torch.no_grad():
        expected = model.classifier(to_input(model, preprocess(model, images, 10**7))).numpy()
    for row, answer in zip(expected, answers, strict=True):
        got = np.array([answer[c] for c in model.classnames])
        np.testing.assert_allclose(got, row, atol=1e-4)
        assert max(answer, key=answer.__getitem__) == model.classnames[int(row.argmax())]


def test_onnx_route_gives_the_file_a_fresh_process_answers_as_predict_with(
    client: TestClient, ctx: AppContext, shapes: int, tmp_path: Path
) -> None:
    first = client.get("/models/shapes/versions/1/onnx")
    assert first.status_code == 200, first.text
    assert (
        first.headers["x-model-digest"] and "shapes-v1.onnx" in first.headers["content-disposition"]
    )
    path = tmp_path / "shapes-v1.onnx"
    path.write_bytes(first.content)
    cached = ctx.settings.onnx_dir / f"{first.headers['x-model-digest']}.onnx"
    stamp = cached.stat().st_mtime_ns
    assert client.get("/models/shapes/versions/1/onnx").content == first.content
    assert cached.stat().st_mtime_ns == stamp  # served from the cache, not made again
    files = []
    for i, color in enumerate(COLORS):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png_bytes(color))
    result = run_standalone(path, files)
    answers = predicted(client, "shapes/1")
    got = np.array(result["probabilities"])  # type: ignore[arg-type]
    for row, answer in zip(got, answers, strict=True):
        expected = [answer[c] for c in result["classes"]]  # type: ignore[attr-defined]
        np.testing.assert_allclose(row, expected, atol=1e-4)


def test_onnx_route_needs_the_train_scope_and_a_version(client: TestClient, shapes: int) -> None:
    created = client.post("/keys", json={"name": "p", "scopes": ["predict"]}).json()
    refused = client.get(
        "/models/shapes/versions/1/onnx", headers={"Authorization": f"Bearer {created['key']}"}
    )
    assert refused.status_code == 403
    assert client.get("/models/shapes/versions/9/onnx").status_code == 404


def test_a_model_that_cannot_be_exported_is_served_by_torch(
    client: TestClient, ctx: AppContext, tmp_path: Path
) -> None:
    folder = save_artifact(tmp_path / "vit", classifier_for("test-onnx-timm-vit"), {})
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "vit", folder, "ftjob-" + "d" * 24)
    answers = predicted(client, "vit")
    assert len(answers) == len(COLORS) and resolve(ctx, "vit").engine == "torch"
    refused = client.get("/models/vit/versions/1/onnx")
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "not_exportable" and "cannot be exported" in error["message"]


def test_onnxruntime_pass_carries_the_monitors_statistics_as_torchs_does(
    client: TestClient, ctx: AppContext, shapes: int
) -> None:
    # The shift monitor reads each head's label and the embedding from the served pass: the
    # export's extra outputs give ONNX Runtime's pass the same layout as served_pass's.
    predicted(client)
    model = resolve(ctx, "shapes")
    assert model.engine == "onnxruntime"
    images = [ImageInput(png_bytes(c), None, "x") for c in COLORS]
    inputs = to_input(model, preprocess(model, images, 10**7))
    classes = len(model.classnames)
    probs, rest = unpack(forward(model, preprocess(model, images, 10**7)), classes)
    want_probs, want_rest = unpack(served_pass(model.classifier, inputs), classes)
    assert rest is not None and want_rest is not None and rest.shape == want_rest.shape
    np.testing.assert_allclose(probs.numpy(), want_probs.numpy(), atol=1e-4)
    assert torch.equal(rest[:, :2], want_rest[:, :2])  # the default and concept heads' labels
    np.testing.assert_allclose(rest[:, 2:].numpy(), want_rest[:, 2:].numpy(), atol=1e-4)
