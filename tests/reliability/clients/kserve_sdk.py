"""Drives the API through KServe's Python SDK (``kserve.InferenceRESTClient``, protocol v2).

Runs in the SDK's own environment (``.venv-clients``, requirements/clients.txt), not the
project's: ``python kserve_sdk.py BASE_URL API_KEY IMAGES_DIR``. It imports nothing from the
project and prints one JSON object with what the SDK saw, which
tests/reliability/test_kserve_client.py compares with ``/predict``'s answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput


async def status_of(call: Any) -> dict[str, Any]:
    """The HTTP status and message of a call the SDK raises on, as the SDK raises it."""
    try:
        await call
    except httpx.HTTPStatusError as error:
        return {"status": error.response.status_code, "message": str(error)}
    return {"status": 200, "message": ""}


async def main(base_url: str, key: str, images_dir: Path) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}"}
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60, retries=0))
    encoded = [p.read_bytes() for p in sorted(images_dir.glob("*.png"))]
    out: dict[str, Any] = {
        "live": await client.is_server_live(base_url),
        "ready": await client.is_server_ready(base_url),
        "model_ready": await client.is_model_ready(base_url, "shapes", headers=auth),
    }
    as_text = [base64.b64encode(b).decode() for b in encoded]
    for binary in (False, True):  # JSON (base64 text) and the binary tensor extension (raw)
        images = InferInput("images", [len(encoded)], "BYTES")
        data = encoded if binary else as_text
        images.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
        request = InferRequest(
            "shapes",
            [images],
            model_version="1",
            parameters={"top_k": 2},
            request_outputs=[
                RequestedOutput("probabilities", parameters={"binary_data": binary}),
                RequestedOutput("labels", parameters={"binary_data": False}),
            ],
        )
        # The SDK posts to /v2/models/{model_name}/infer: a version goes in the path it builds.
        name = "shapes/versions/1" if binary else "shapes"
        response = await client.infer(base_url, request, model_name=name, headers=dict(auth))
        probabilities = response.get_output_by_name("probabilities").as_numpy()
        labels = response.get_output_by_name("labels").as_numpy()
        out["binary" if binary else "json"] = {
            "model_name": response.model_name,
            "probabilities": probabilities.astype(float).tolist(),
            "dtype": str(probabilities.dtype),
            "labels": [[x.decode() if isinstance(x, bytes) else x for x in row] for row in labels],
        }
    wrong = InferInput("images", [1], "FP32")
    wrong.set_data_from_numpy(np.zeros(1, dtype=np.float32), binary_data=False)
    one = InferInput("images", [1], "BYTES")
    one.set_data_from_numpy(np.array(as_text[:1], dtype=np.object_), binary_data=False)
    out["errors"] = {
        "wrong_datatype": await status_of(
            client.infer(base_url, InferRequest("shapes", [wrong]), "shapes", headers=dict(auth))
        ),
        "unknown_output": await status_of(
            client.infer(
                base_url,
                InferRequest("shapes", [one], request_outputs=[RequestedOutput("logits")]),
                "shapes",
                headers=dict(auth),
            )
        ),
        "no_key": await status_of(client.infer(base_url, InferRequest("shapes", [one]), "shapes")),
        "unknown_model": await status_of(
            client.infer(base_url, InferRequest("nope", [one]), "nope", headers=dict(auth))
        ),
    }
    await client.close()
    return out


if __name__ == "__main__":
    base, api_key, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    print(json.dumps(asyncio.run(main(base, api_key, folder))))
