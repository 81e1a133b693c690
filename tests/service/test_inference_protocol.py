"""The Open Inference Protocol (KServe V2 REST) routes in process: metadata, infer with BYTES
and FP32 in JSON and in the binary extension, the same answers as /predict, and every bad
input a 4xx in the protocol's error body."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.context import AppContext
from tests.service.support import b64, png_bytes, register_artifact

COLORS = [(200, 60, 60), (20, 200, 90), (30, 40, 220)]


@pytest.fixture
def shapes(ctx: AppContext, artifact_folder: Path) -> int:
    with ctx.sessions() as session:
        return register_artifact(session, ctx.store, "shapes", artifact_folder, "ftjob-" + "b" * 24)


def images_input(colors: list[tuple[int, int, int]] = COLORS) -> dict[str, Any]:
    data = [b64(png_bytes(c)) for c in colors]
    return {"name": "images", "datatype": "BYTES", "shape": [len(data)], "data": data}


def predict_probabilities(client: TestClient, colors: list[tuple[int, int, int]]) -> np.ndarray:
    answer = client.post(
        "/predict",
        json={"model": "shapes", "images": [b64(png_bytes(c)) for c in colors], "top_k": 4},
    ).json()
    classes = client.get("/v2/models/shapes").json()["parameters"]["classnames"]
    rows = []
    for item in answer["data"]:
        by_label = {x["label"]: x["probability"] for x in item["labels"]}
        rows.append([by_label[c] for c in classes])
    return np.array(rows)


def output(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(o for o in body["outputs"] if o["name"] == name)


def test_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "robust-clip" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_names_inputs_outputs_and_shapes(client: TestClient, shapes: int) -> None:
    meta = client.get("/v2/models/shapes").json()
    assert meta["name"] == "shapes" and meta["versions"] == [str(shapes)]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["images"] == {"name": "images", "datatype": "BYTES", "shape": [-1]}
    assert inputs["pixel_values"]["shape"] == [-1, 3, 32, 32]
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["probabilities"]["shape"] == [-1, 4]
    assert meta["parameters"]["classnames"] == ["circle", "cross", "square", "triangle"]
    assert client.get(f"/v2/models/shapes/versions/{shapes}").json()["versions"] == ["1"]
    assert client.get("/v2/models/shapes/ready").json()["ready"] is True


def test_infer_bytes_in_json_matches_predict(client: TestClient, shapes: int) -> None:
    body = {"id": "r1", "inputs": [images_input()], "parameters": {"top_k": 2}}
    answer = client.post("/v2/models/shapes/infer", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["model_name"] == "shapes" and result["model_version"] == "1"
    assert result["id"] == "r1"
    probs = output(result, "probabilities")
    assert probs["datatype"] == "FP32" and probs["shape"] == [3, 4]
    got = np.array(probs["data"]).reshape(3, 4)
    np.testing.assert_allclose(got, predict_probabilities(client, COLORS), atol=1e-6)
    labels = output(result, "labels")
    assert labels["datatype"] == "BYTES" and labels["shape"] == [3, 2]
    classes = ["circle", "cross", "square", "triangle"]
    best = [classes[i] for i in got.argmax(axis=1)]
    assert labels["data"][::2] == best


def test_infer_fp32_tensor_equals_the_images_it_was_made_from(
    client: TestClient, ctx: AppContext, shapes: int
) -> None:
    from service.predict.cache import to_input
    from service.predict.service import ImageInput, preprocess, resolve

    model = resolve(ctx, "shapes")
    images = [ImageInput(png_bytes(c), None, "x") for c in COLORS]
    pixels = to_input(model, preprocess(model, images, 10**7)).numpy()
    body = {
        "inputs": [
            {
                "name": "pixel_values",
                "datatype": "FP32",
                "shape": list(pixels.shape),
                "data": pixels.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "probabilities"}],
    }
    result = client.post("/v2/models/shapes/versions/1/infer", json=body).json()
    got = np.array(output(result, "probabilities")["data"]).reshape(3, 4)
    np.testing.assert_allclose(got, predict_probabilities(client, COLORS), atol=1e-5)
    assert [o["name"] for o in result["outputs"]] == ["probabilities"]


def binary_request(colors: list[tuple[int, int, int]]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(struct.pack("<I", len(p)) + p for p in (png_bytes(c) for c in colors))
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "BYTES",
                    "shape": [len(colors)],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"classification": 2}},
            ],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(head)),
        "Content-Type": "application/octet-stream",
    }
    return head + raw, headers


def test_binary_tensor_extension_both_ways(client: TestClient, shapes: int) -> None:
    body, headers = binary_request(COLORS)
    answer = client.post("/v2/models/shapes/infer", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    length = int(answer.headers["inference-header-content-length"])
    head = json.loads(answer.content[:length])
    first, ranked = head["outputs"]
    size = first["parameters"]["binary_data_size"]
    assert size == 3 * 4 * 4
    got = np.frombuffer(answer.content[length : length + size], dtype="<f4").reshape(3, 4)
    np.testing.assert_allclose(got, predict_probabilities(client, COLORS), atol=1e-6)
    # Triton's classification extension: "probability:index:label", best first.
    assert ranked["datatype"] == "BYTES" and ranked["shape"] == [3, 2]
    value, index, label = ranked["data"][0].split(":")
    assert int(index) == int(got[0].argmax()) and abs(float(value) - got[0].max()) < 1e-5
    assert label == ["circle", "cross", "square", "triangle"][int(index)]


BAD = [
    ({"inputs": [{**images_input(), "datatype": "FP32"}]}, 400, "must be BYTES"),
    ({"inputs": [{**images_input(), "name": "img"}]}, 400, "unknown input 'img'"),
    ({"inputs": [{**images_input(), "shape": [2]}]}, 400, "has shape [2] but 3 elements"),
    ({"inputs": [{**images_input(), "shape": [3, 2]}]}, 400, "shape [N] or [N, 1]"),
    ({"inputs": [images_input()], "outputs": [{"name": "logits"}]}, 400, "unknown output"),
    ({"inputs": [images_input(), images_input()]}, 400, "send one input tensor"),
    ({"inputs": []}, 400, "inputs must be a list"),
    (
        {
            "inputs": [
                {
                    "name": "pixel_values",
                    "datatype": "FP32",
                    "shape": [1, 3, 8, 8],
                    "data": [0.0] * 192,
                }
            ]
        },
        400,
        "[N, 3, 32, 32]",
    ),
    (
        {
            "inputs": [
                {
                    "name": "pixel_values",
                    "datatype": "FP32",
                    "shape": [1, 3, 32, 32],
                    "data": [0.0] * 10,
                }
            ]
        },
        400,
        "but 10 values",
    ),
    (
        {
            "inputs": [
                {"name": "pixel_values", "datatype": "FP32", "shape": [65, 3, 32, 32], "data": []}
            ]
        },
        413,
        "over the limit of 64",
    ),
    ({"inputs": [{**images_input(), "data": ["%%%"] * 3}]}, 400, "not valid base64"),
    ({"inputs": [{**images_input(), "data": [b64(b"not an image")] * 3}]}, 422, "images[0]"),
    ({"inputs": [images_input()], "parameters": {"top_k": 0}}, 400, "top_k"),
    ({"inputs": [{**images_input(), "name": ["images"]}]}, 400, "unknown input"),
    ({"inputs": [images_input()], "outputs": [{"name": {"a": 1}}]}, 400, "unknown output"),
    ({"inputs": [{**images_input(), "parameters": []}]}, 400, "must be a JSON object"),
    ({"inputs": [images_input()], "id": 7}, 400, "id must be a string"),
    ({"inputs": [images_input()], "parameters": {"monitor": "no"}}, 400, "parameters.monitor"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD)
def test_bad_input_is_a_4xx_in_the_protocol_error_body(
    client: TestClient, shapes: int, body: dict[str, Any], status: int, says: str
) -> None:
    answer = client.post("/v2/models/shapes/infer", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert set(error) == {"error"} and isinstance(error["error"], str)
    assert says in error["error"]


def test_protocol_errors_outside_the_body(client: TestClient, shapes: int) -> None:
    cases = [
        client.post("/v2/models/nope/infer", json={"inputs": [images_input()]}),
        client.post("/v2/models/shapes/versions/x/infer", json={"inputs": [images_input()]}),
        client.post("/v2/models/shapes/infer", content=b"{", headers={"content-type": "x"}),
        client.post(
            "/v2/models/shapes/infer",
            content=b"{}",
            headers={"Inference-Header-Content-Length": "99"},
        ),
        client.post(
            "/v2/models/shapes/infer",
            json={"inputs": [images_input()]},
            headers={"Authorization": "Bearer wrong"},
        ),
        client.get("/v2/models/nope"),
        client.post("/v2/models/shapes/infer", content=b"[" * 100_000),
        client.post("/v2/models/shapes/infer", content=b"\xff\xfe{}"),
    ]
    assert [c.status_code for c in cases] == [404, 400, 400, 400, 401, 404, 400, 400]
    for answer in cases:
        assert set(answer.json()) == {"error"} and isinstance(answer.json()["error"], str)


@pytest.mark.parametrize("settings_overrides", [{"max_predict_bytes": 2048}])
def test_oversized_body_is_a_413_in_the_protocol_body(client: TestClient, shapes: int) -> None:
    body = {
        "inputs": [
            {
                "name": "pixel_values",
                "datatype": "FP32",
                "shape": [1, 3, 32, 32],
                "data": [0.5] * 3072,
            }
        ]
    }
    answer = client.post("/v2/models/shapes/infer", json=body)
    assert answer.status_code == 413 and set(answer.json()) == {"error"}
