"""The Open Inference Protocol with KServe's own Python SDK (``kserve.InferenceRESTClient``)
against the real API process: readiness, encoded images as BYTES in JSON and in the binary
tensor extension, the same probabilities as ``/predict``, and the protocol's errors.

The SDK cannot live in the project's environment (it pins protobuf, pandas and psutil below
what the project needs), so ``make install`` gives it its own (``.venv-clients``, from
requirements/clients.txt) and this test runs tests/reliability/clients/kserve_sdk.py there. A
missing environment fails the test: it never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import LiveApi
from tests.reliability.test_inference_clients import COLORS, png, predict_rows
from tests.service.support import API_KEY

ROOT = Path(__file__).resolve().parents[2]
CLIENTS_PYTHON = Path(os.environ.get("RCS_CLIENTS_PYTHON", ROOT / ".venv-clients/bin/python"))
SCRIPT = Path(__file__).with_name("clients") / "kserve_sdk.py"


@pytest.fixture(scope="module")
def clients_python() -> Path:
    if not CLIENTS_PYTHON.exists():
        pytest.fail(
            f"{CLIENTS_PYTHON} is missing: `make install` makes the KServe SDK's environment "
            "(requirements/clients.txt), or set RCS_CLIENTS_PYTHON to a Python that has kserve"
        )
    return CLIENTS_PYTHON


def test_the_kserve_sdk_reads_what_predict_answers(
    clients_python: Path, live_api: LiveApi, tmp_path: Path
) -> None:
    for i, color in enumerate(COLORS):
        (tmp_path / f"{i}.png").write_bytes(png(color))
    # The SDK's environment only: the project's PYTHONPATH would mix the two.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(clients_python), str(SCRIPT), live_api.base_url, API_KEY, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout)
    assert seen["live"] is True and seen["ready"] is True and seen["model_ready"] is True

    with live_api.client() as http:
        meta = http.get("/v2/models/shapes/versions/1").json()
    classes = meta["parameters"]["classnames"]
    expected = predict_rows(live_api, classes)
    for form in ("json", "binary"):
        answer = seen[form]
        # (the SDK's InferResponse.from_bytes keeps model_name and drops model_version)
        assert answer["model_name"] == "shapes"
        assert answer["dtype"] == "float32"
        probs = np.array(answer["probabilities"])
        assert probs.shape == (len(COLORS), len(classes))
        np.testing.assert_allclose(probs, expected, atol=1e-6)
        assert [row[0] for row in answer["labels"]] == [classes[i] for i in probs.argmax(1)]
        assert all(len(row) == 2 for row in answer["labels"])  # top_k reached the server

    errors = seen["errors"]
    assert errors["wrong_datatype"]["status"] == 400
    assert "must be BYTES" in errors["wrong_datatype"]["message"]
    assert errors["unknown_output"]["status"] == 400
    assert "unknown output 'logits'" in errors["unknown_output"]["message"]
    assert errors["no_key"]["status"] == 401
    assert errors["unknown_model"]["status"] == 404
