"""The Open Inference Protocol with the client people use: ``tritonclient.http`` against the
real API process (uvicorn), its default binary tensors and plain JSON, the same answers as
``/predict``, and its errors raised as the client raises a server's."""

from __future__ import annotations

import io
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from tests.reliability.conftest import LiveApi
from tests.service.support import API_KEY, b64

COLORS = [(200, 60, 60), (20, 200, 90), (30, 40, 220)]


def auth() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient writes its Inference-Header-Content-Length
    into the dict it is given, which would leak into the next request."""
    return {"Authorization": f"Bearer {API_KEY}"}


def png(color: tuple[int, int, int], size: int = 48) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def client(live_api: LiveApi) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(urlparse(live_api.base_url).netloc, network_timeout=60)


def predict_rows(live_api: LiveApi, classes: list[str]) -> np.ndarray:
    images = [b64(png(c)) for c in COLORS]
    with live_api.client() as http:
        answer = http.post("/predict", json={"model": "shapes/1", "images": images, "top_k": 10})
    assert answer.status_code == 200, answer.text
    by_label = [{x["label"]: x["probability"] for x in d["labels"]} for d in answer.json()["data"]]
    return np.array([[row[c] for c in classes] for row in by_label])


def test_health_and_metadata_through_tritonclient(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "robust-clip"
    assert client.is_model_ready("shapes", "1", headers=auth())
    meta = client.get_model_metadata("shapes", headers=auth())
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {
        "images": "BYTES",
        "pixel_values": "FP32",
    }


def test_bytes_images_in_binary_answer_as_predict(
    client: triton.InferenceServerClient, live_api: LiveApi
) -> None:
    classes = client.get_model_metadata("shapes", headers=auth())["parameters"]["classnames"]
    images = triton.InferInput("images", [len(COLORS)], "BYTES")
    images.set_data_from_numpy(np.array([png(c) for c in COLORS], dtype=np.object_))
    outputs = [
        triton.InferRequestedOutput("probabilities"),
        triton.InferRequestedOutput("labels", binary_data=False),
    ]
    result = client.infer(
        "shapes",
        [images],
        model_version="1",
        outputs=outputs,
        headers=auth(),
        parameters={"top_k": 2},
    )
    probs = result.as_numpy("probabilities")
    assert probs.shape == (3, len(classes)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, predict_rows(live_api, classes), atol=1e-6)
    labels = result.as_numpy("labels")
    assert labels.shape == (3, 2)
    assert [label.decode() if isinstance(label, bytes) else label for label in labels[:, 0]] == [
        classes[i] for i in probs.argmax(axis=1)
    ]


def test_fp32_tensor_in_json_and_the_classification_extension(
    client: triton.InferenceServerClient, live_api: LiveApi
) -> None:
    meta = client.get_model_metadata("shapes", headers=auth())
    pre, classes = meta["parameters"]["preprocess"], meta["parameters"]["classnames"]
    size = pre["size"] if isinstance(pre["size"], int) else pre["size"][0]
    pixels = []
    for color in COLORS:  # plain colour: any resize and crop leaves the same pixels
        x = np.full((size, size, 3), color, dtype=np.float32) / 255
        pixels.append(((x - pre["mean"]) / pre["std"]).transpose(2, 0, 1))
    tensor = triton.InferInput("pixel_values", [3, 3, size, size], "FP32")
    tensor.set_data_from_numpy(np.stack(pixels).astype(np.float32), binary_data=False)
    ranked = triton.InferRequestedOutput("probabilities", binary_data=False, class_count=2)
    result = client.infer("shapes", [tensor], outputs=[ranked], headers=auth())
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 2)
    expected = predict_rows(live_api, classes)
    for row, cells in zip(expected, top, strict=True):
        value, index, label = (
            cells[0].decode() if isinstance(cells[0], bytes) else cells[0]
        ).split(":")
        assert classes[int(index)] == label == classes[int(row.argmax())]
        assert abs(float(value) - row.max()) < 1e-4


def raised(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_errors_reach_the_client_as_the_protocol_says(
    client: triton.InferenceServerClient, live_api: LiveApi
) -> None:
    wrong_type = triton.InferInput("images", [1], "FP32")
    wrong_type.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    error = raised(lambda: client.infer("shapes", [wrong_type], headers=auth()))
    assert error.status() == "400" and "must be BYTES" in error.message()
    images = triton.InferInput("images", [1], "BYTES")
    images.set_data_from_numpy(np.array([png(COLORS[0])], dtype=np.object_))
    unknown = [triton.InferRequestedOutput("logits")]
    error = raised(lambda: client.infer("shapes", [images], outputs=unknown, headers=auth()))
    assert error.status() == "400" and "unknown output 'logits'" in error.message()
    error = raised(lambda: client.infer("shapes", [images]))  # no key
    assert error.status() == "401"
    error = raised(lambda: client.infer("nope", [images], headers=auth()))
    assert error.status() == "404"
    big = triton.InferInput("pixel_values", [65, 3, 32, 32], "FP32")
    big.set_data_from_numpy(np.zeros((65, 3, 32, 32), dtype=np.float32))
    error = raised(lambda: client.infer("shapes", [big], headers=auth()))
    assert error.status() == "413"  # over RCS_MAX_PREDICT_BYTES (2 MB) or the image count
    with httpx.Client(base_url=live_api.base_url) as http:  # and never a 500 in the log's eyes
        assert http.get("/v2/health/live").json() == {"live": True}
