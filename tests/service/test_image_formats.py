"""The image formats the service accepts (issue 22, item 6), where users send images: ``/predict``
(multipart and base64) and dataset registration. Any format but JPEG, PNG, WebP, GIF and BMP is a
422 naming the image, the format it looks like and the accepted ones."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.data.synthetic import write_shapes_dataset
from service.context import AppContext
from tests.service.support import b64, register_artifact

ACCEPTED = "(accepted: JPEG, PNG, WEBP, GIF, BMP)"


@pytest.fixture
def settings_overrides(tmp_path: Path, shapes_root: Path) -> dict[str, Any]:
    return {"allowed_dataset_roots": [shapes_root, tmp_path / "data"]}


def encode(fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((32, 32), 64).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def test_predict_refuses_other_formats_naming_them(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "1" * 24)
    for fmt, mode in (("EPS", "RGB"), ("TIFF", "F"), ("ICO", "RGB"), ("PCX", "RGB")):
        data = encode(fmt, mode)
        files = [("files", ("x.png", data, "image/png"))]
        sent = client.post("/predict", data={"model": "shapes"}, files=files)
        error = sent.json()["error"]
        assert sent.status_code == 422 and error["param"] == "files[0]", sent.text
        assert (
            f"image 'x.png' is not an accepted image format: it looks like {fmt}"
            in (error["message"])
        )
        assert error["message"].endswith(ACCEPTED)
        as_json = client.post("/predict", json={"model": "shapes", "images": [b64(data)]})
        assert as_json.status_code == 422 and as_json.json()["error"]["param"] == "images[0]"
    ok = client.post("/predict", json={"model": "shapes", "images": [b64(encode("WEBP"))]})
    assert ok.status_code == 200, ok.text


def test_a_dataset_with_a_tiff_is_refused_naming_the_file(
    client: TestClient, tmp_path: Path
) -> None:
    root = write_shapes_dataset(tmp_path / "data" / "shapes", per_class=2, size=16)
    (root / "train" / "circle" / "scan.tif").write_bytes(encode("TIFF"))
    response = client.post("/datasets", json={"name": "tiffs", "path": str(root)})
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "scan.tif" in message and "it looks like TIFF" in message and ACCEPTED in message
