"""Each route declares its body limit (``service.limits.body_limit``); no path table decides.

The limit is the matched route's, so an upload route takes an archive over the JSON limit, a
JSON route refuses it, and a route's path with another method keeps the route's limit.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.limits import JSON_BODY_BYTES, body_limit

OVER_JSON = b"x" * (JSON_BODY_BYTES + 1)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"max_upload_bytes": 3 * JSON_BODY_BYTES, "max_predict_bytes": 1000}


def refused_over(response: Any) -> int | None:
    """The limit a 413 names, or None when the body was not refused for its size."""
    if response.status_code != 413:
        return None
    message: str = response.json()["error"]["message"]
    return int(message.split("limit of ")[1].split(" ")[0])


def test_each_route_answers_with_its_own_limit(client: TestClient) -> None:
    form = {"Content-Type": "multipart/form-data; boundary=x"}
    upload = client.post("/datasets/upload", content=OVER_JSON, headers=form)
    assert refused_over(upload) is None  # under the upload limit: judged as a form, not refused
    import_ = client.post("/models/shapes/versions", content=OVER_JSON, headers=form)
    assert refused_over(import_) is None
    assert refused_over(client.post("/datasets", content=OVER_JSON)) == JSON_BODY_BYTES
    assert refused_over(client.post("/predict", content=b"x" * 1001)) == 1000
    # The router answers 405 for a path with another method: the path's route limits it.
    assert refused_over(client.put("/predict", content=b"x" * 1001)) == 1000
    assert refused_over(client.post("/no/such/route", content=OVER_JSON)) == JSON_BODY_BYTES


def test_a_limit_names_a_setting_that_exists() -> None:
    with pytest.raises(ValueError, match="no setting 'max_body'"):
        body_limit("max_body")
