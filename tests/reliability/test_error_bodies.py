"""Every error is our JSON error body: malformed bodies on every route, with and without a key.

The operations come from the app's OpenAPI schema, so a new route is covered without editing
this file. Each answer must be below 500; a 4xx must be ``{"error": {code, message, param,
type}}``, short (echoed input is trimmed) and free of the server's own folders.

The app runs in-process (``TestClient`` without re-raising, so a bug is the 500 a client would
get): several hundred requests take seconds, with no server start on a busy machine.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth.service import create_key
from tests.reliability.conftest import record
from tests.service.support import (
    API_KEY,
    FakeBroker,
    b64,
    make_settings,
    png_bytes,
    register_artifact,
)
from tools.processes import ROOT, process_env

# What starlette's TestClient returns: httpx's or httpx2's Response, by what is installed.
Response = Any
# The most any error body may weigh: the longest message plus a clipped echo or two.
MAX_ERROR_BYTES = 2500
HUGE = 129 * 1024


@dataclass
class Api:
    client: TestClient
    predict_key: str
    workdir: str

    def as_key(self, key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}


@pytest.fixture
def api(tmp_path: Path, shapes_root: Path, reliability_artifact: Path) -> Iterator[Api]:
    settings = make_settings(tmp_path, shapes_root)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ctx = client.app.state.ctx  # type: ignore[attr-defined]
        ctx.broker = FakeBroker()
        with ctx.sessions() as session:
            register_artifact(
                session, ctx.store, "shapes", reliability_artifact, "ftjob-" + "a" * 24
            )
            _, predict_key = create_key(session, "predict-only", ["predict"])
        yield Api(client, predict_key, str(settings.work_dir))


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    json_body: bool
    properties: tuple[str, ...]


def operations(schema: dict[str, Any]) -> list[Operation]:
    found = []
    for template, methods in schema["paths"].items():
        for method, spec in methods.items():
            path = _fill_path(template, spec.get("parameters", []))
            content = spec.get("requestBody", {}).get("content", {})
            body_schema = _resolve(schema, content.get("application/json", {}).get("schema", {}))
            properties = tuple(body_schema.get("properties", {}))
            found.append(Operation(method.upper(), path, "application/json" in content, properties))
    return found


def _fill_path(template: str, parameters: list[dict[str, Any]]) -> str:
    # Names and ids that exist nowhere: a DELETE among the operations must change nothing.
    for parameter in parameters:
        if parameter.get("in") == "path":
            kind = parameter.get("schema", {}).get("type")
            value = "999" if kind == "integer" else "no-such-thing"
            template = template.replace("{" + parameter["name"] + "}", value)
    return template


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: dict[str, Any] = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def malformed_bodies(operation: Operation) -> dict[str, tuple[bytes, str]]:
    """name -> (body, content type)."""
    fields = operation.properties or ("name",)
    nested = 20_000
    return {
        "invalid JSON": (b'{"model": "shapes", ', "application/json"),
        "empty": (b"", "application/json"),
        "wrong content type": (b"model=shapes", "text/plain"),
        "JSON list": (b"[1, 2, 3]", "application/json"),
        "JSON string": (b'"hello"', "application/json"),
        "JSON null": (b"null", "application/json"),
        "wrong field types": (
            json.dumps({f: {"a": [1]} for f in fields}).encode(),
            "application/json",
        ),
        # Five fields at most: under the 1 MiB limit of JSON routes, which answers 413 first.
        "huge strings": (
            json.dumps({f: "x" * HUGE for f in fields[:5]}).encode(),
            "application/json",
        ),
        "NUL characters": (
            json.dumps({f: "a\u0000b" for f in fields}).encode(),
            "application/json",
        ),
        "deeply nested": (b"[" * nested + b"]" * nested, "application/json"),
        "invalid multipart": (b"--zzz\r\nnonsense", "multipart/form-data; boundary=zzz"),
        "multipart without boundary": (b"abc", "multipart/form-data"),
        "invalid UTF-8": (b'{"name": "\xff\xfe"}', "application/json"),
    }


def error_of(response: Response, workdir: str) -> dict[str, Any]:
    """The error object of a 4xx, after checking its shape, size and content (on the Open
    Inference Protocol's routes, its own body: ``{"error": "<message>"}``)."""
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    assert len(response.content) <= MAX_ERROR_BYTES, len(response.content)
    if response.request.url.path.startswith("/v2/"):
        assert set(response.json()) == {"error"} and response.json()["error"]
        assert workdir not in response.text and "Traceback" not in response.text
        return {"message": response.json()["error"]}
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "param", "type"}
    assert error["type"] == "invalid_request_error" and error["code"] and error["message"]
    assert workdir not in response.text and "Traceback" not in response.text
    return error


def test_malformed_bodies_on_every_route_get_json_errors_never_a_5xx(api: Api) -> None:
    ops = operations(api.client.get("/openapi.json").json())
    assert len(ops) >= 20
    statuses: Counter[int] = Counter()
    invalid_json: dict[str, int] = {}
    for op in ops:
        # A route that wants a key (401 with no key and no body) wants it whatever the body.
        needs_key = api.client.request(op.method, op.path).status_code == 401
        for name, (body, content_type) in malformed_bodies(op).items():
            for key in (None, API_KEY):
                headers = {"content-type": content_type, **api.as_key(key)}
                response = api.client.request(op.method, op.path, content=body, headers=headers)
                statuses[response.status_code] += 1
                where = (op.method, op.path, name, key is not None)
                assert response.status_code < 500, (where, response.text[:500])
                if response.status_code >= 400:
                    error_of(response, api.workdir)
                if key is None and needs_key:
                    assert response.status_code == 401, (where, response.text[:300])
                if key and op.json_body and name in ("invalid JSON", "deeply nested"):
                    invalid_json[f"{op.method} {op.path} ({name})"] = response.status_code
    # A body that is not JSON is the same status on every route that takes JSON: 422, and 400
    # on the Open Inference Protocol's infer (the protocol's status for a malformed request).
    protocol = {k: v for k, v in invalid_json.items() if " /v2/" in k}
    assert protocol and set(protocol.values()) == {400}, protocol
    ours = {k: v for k, v in invalid_json.items() if k not in protocol}
    assert ours and set(ours.values()) == {422}, ours
    for method, path, status in (("GET", "/no/such/route", 404), ("PATCH", "/predict", 405)):
        response = api.client.request(method, path, headers=api.as_key(API_KEY))
        assert response.status_code == status
        error_of(response, api.workdir)
    record(
        "error_bodies",
        operations=len(ops),
        requests=sum(statuses.values()),
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_errors=0,
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/predict", {"model": "m" * 100_000, "images": [b64(png_bytes())]}),
        ("POST", "/descriptions", {"name": "d", "descriptions": {"c" * HUGE: 5}}),
        ("POST", "/finetune", {"model": "b" * HUGE, "dataset": "ds-x"}),
        ("POST", "/datasets", {"name": "n", "path": "/" + "p" * HUGE}),
    ],
)
def test_huge_values_are_not_echoed_back_whole(
    api: Api, method: str, path: str, body: dict[str, Any]
) -> None:
    response = api.client.request(method, path, json=body, headers=api.as_key(API_KEY))
    assert 400 <= response.status_code < 500, response.text[:300]
    error = error_of(response, api.workdir)
    assert len(error["message"]) <= 1100 and len(error["param"] or "") <= 250


def test_the_clipped_echo_says_how_long_the_value_was(api: Api) -> None:
    body = {"model": "m" * 100_000, "images": [b64(png_bytes())]}
    response = api.client.post("/predict", json=body, headers=api.as_key(API_KEY))
    assert response.status_code == 404
    message = error_of(response, api.workdir)["message"]
    assert "'" + "m" * 199 + "… (100002 characters)" in message  # the quotes count


@pytest.mark.parametrize(
    ("image", "accepted"),
    [
        ("data:image/png;base64", False),  # no comma: was an IndexError, a text/plain 500
        ("data:image/png,abc", False),  # a data URL but not base64
        ("data:image/png;base64,{png}", True),
        ("{png_wrapped}", True),  # MIME-style base64, wrapped at 76 columns
        ("data:image/png;base64,{png_wrapped}", True),
        ("{png} ", True),
        ("QU\u0000JD", False),
        ("not base64!", False),
    ],
)
def test_base64_and_data_urls(api: Api, image: str, accepted: bool) -> None:
    encoded = b64(png_bytes())
    wrapped = "\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    image = image.replace("{png_wrapped}", wrapped).replace("{png}", encoded)
    body = {"model": "shapes", "images": [image]}
    response = api.client.post("/predict", json=body, headers=api.as_key(api.predict_key))
    if accepted:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 422, response.text
        assert error_of(response, api.workdir)["param"] == "images[0]"


@pytest.mark.parametrize("body", [b"{nope", b"[" * 5000 + b"]" * 5000, b'{"a": "\xff"}'])
def test_the_key_is_checked_before_the_body_is_read(api: Api, body: bytes) -> None:
    json_type = {"content-type": "application/json"}

    def post(path: str, key: str | None) -> Response:
        return api.client.post(path, content=body, headers={**json_type, **api.as_key(key)})

    for path in ("/datasets", "/finetune", "/descriptions", "/predict"):
        assert post(path, None).status_code == 401, path
    assert post("/finetune", "rcs_wrong_key_0123456789").status_code == 401
    # A valid key without the scope: 403, also before the body.
    assert post("/finetune", api.predict_key).status_code == 403
    answer = post("/finetune", API_KEY)
    assert answer.status_code == 422 and answer.json()["error"]["param"] is None
    assert answer.json()["error"]["message"].startswith("the body is not valid JSON")


def test_a_predict_key_sees_no_server_paths(api: Api) -> None:
    paths = ("/models/shapes/versions/1", "/models/shapes/versions")
    for path in paths:
        train = api.client.get(path, headers=api.as_key(API_KEY))
        predict = api.client.get(path, headers=api.as_key(api.predict_key))
        assert train.status_code == predict.status_code == 200
        # The folders are in what a train key reads, and nowhere in what a predict key reads.
        assert str(Path(api.workdir).parent) in train.text
        assert str(Path(api.workdir).parent) not in predict.text
        # No value is an absolute path, but the API's own links (``/models/...``, ``/evaluations``).
        api_links = ('"/models/', '"/evaluations?')
        absolute = [i for i in range(len(predict.text)) if predict.text.startswith('"/', i)]
        assert all(predict.text.startswith(api_links, i) for i in absolute), predict.text
    version = api.client.get(paths[0], headers=api.as_key(api.predict_key)).json()
    assert version["source"] == "models:/shapes/1"
    train_version = api.client.get(paths[0], headers=api.as_key(API_KEY)).json()
    assert version["classes"] == train_version["classes"]
    assert version["metrics"] == train_version["metrics"]


def test_server_folders_are_hidden_in_error_messages(api: Api, tmp_path: Path) -> None:
    # An archive without split folders: the dataset check names the folder it unpacked into.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("train/a/notes.txt", "not an image")
    files = {"file": ("d.zip", buffer.getvalue(), "application/zip")}
    response = api.client.post(
        "/datasets/upload", data={"name": "broken"}, files=files, headers=api.as_key(API_KEY)
    )
    assert 400 <= response.status_code < 500, response.text
    error_of(response, api.workdir)
    assert str(tmp_path) not in response.text


def start(module: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    settings = {
        "RCS_DATABASE_URL": f"sqlite:///{tmp_path / 'rcs.db'}",
        "RCS_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "RCS_WORK_DIR": str(tmp_path / "work"),
        **env,
    }
    args = [sys.executable, "-m", module] + (
        ["serve", "--port", "1"] if module == "service" else []
    )
    return subprocess.run(
        args, cwd=ROOT, env=process_env(settings), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # two process starts: a torch import each, 10-60 s on a busy machine
@pytest.mark.parametrize("module", ["service", "worker"])
def test_a_bad_setting_at_start_is_one_line_naming_it(module: str, tmp_path: Path) -> None:
    env = {"RCS_ENV": "local", "RCS_MAX_UPLOAD_BYTES": "lots", "RCS_PREDICT_MAX_BATCH": "0"}
    done = start(module, env, tmp_path)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0
    assert "Traceback" not in output and len(output.splitlines()) == 1, output
    assert output.startswith("refusing to start: ")
    assert "RCS_MAX_UPLOAD_BYTES: Input should be a valid integer" in output
    assert "RCS_PREDICT_MAX_BATCH: Input should be greater than or equal to 1" in output
    assert "lots" not in output  # the values stay out: another one could be a secret
