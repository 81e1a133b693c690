"""Access: every route needs a key but health and metrics; scopes hold; failures leak nothing;
placeholder secrets stop the processes from starting outside local development."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.db.engine import make_engine, make_sessionmaker
from service.db.tables import ApiKey
from service.settings import Settings
from tests.reliability.conftest import LiveApi, record
from tests.service.support import API_KEY
from tools.processes import api_process, free_port, worker_process

# The Open Inference Protocol's server metadata and health need no key, as /healthz and /readyz.
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
}
# Reads need any key; everything that changes state needs the 'train' scope, but /predict and
# the protocol's infer, and the key routes, which need 'admin' (reads too).
PREDICT_ONLY_ALLOWED = {
    ("POST", "/predict"): 422,
    ("POST", "/v2/models/x1/infer"): 400,  # the protocol's status for a malformed request
    ("POST", "/v2/models/x1/versions/x1/infer"): 400,
    # Labels for the images a version served come from the application that asked for the
    # predictions (it holds the predict key); they touch only the monitor's measured top-1.
    ("POST", "/models/x1/versions/x1/feedback"): 422,
}


def scope_of(path: str) -> str:
    return "admin" if path == "/keys" or path.startswith("/keys/") else "train"


def operations(live_api: LiveApi) -> list[tuple[str, str]]:
    schema = httpx.get(f"{live_api.base_url}/openapi.json").json()
    found = []
    for path, item in schema["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "x1", path)
        found.extend((method.upper(), concrete) for method in item if method != "parameters")
    assert len(found) >= 20
    return found


def request(client: httpx.Client, method: str, path: str, **headers: str) -> httpx.Response:
    body: dict[str, Any] = {"json": {}} if method in ("POST", "PUT") else {}
    return client.request(method, path, headers=headers, **body)


def assert_refused(response: httpx.Response, status: int, *secrets: str) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    error = response.json()["error"]
    if response.request.url.path.startswith("/v2/"):  # the protocol's body: {"error": "..."}
        assert isinstance(error, str) and "key" in error
    else:
        assert error["code"] in ("invalid_api_key", "insufficient_scope")
    for secret in secrets:
        assert secret not in response.text
    assert "Traceback" not in response.text and "sqlalchemy" not in response.text.lower()


def test_every_route_but_health_and_metrics_needs_a_key(live_api: LiveApi) -> None:
    ops = operations(live_api)
    bad_keys = {
        "missing": {},
        "empty bearer": {"Authorization": "Bearer"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "unknown": {"Authorization": "Bearer rcs_" + "x" * 43},
        "key as its hash": {"X-API-Key": "0" * 64},
        "huge": {"Authorization": "Bearer " + "k" * 8000},
        "sql": {"X-API-Key": "' OR 1=1 --"},
    }
    refused = 0
    with httpx.Client(base_url=live_api.base_url, timeout=30) as client:
        for method, path in ops:
            if path in PUBLIC:
                assert request(client, method, path).status_code == 200
                continue
            for headers in bad_keys.values():
                assert_refused(request(client, method, path, **headers), 401, "rcs_x", "' OR")
                refused += 1
        for public in ("/healthz", "/readyz", "/metrics"):
            assert client.get(public).status_code == 200
    record("unauthenticated_requests", routes=len(ops), requests=refused, let_in=0)


def test_a_predict_key_reads_and_predicts_but_changes_nothing(live_api: LiveApi) -> None:
    key = live_api.predict_key
    writes = [(m, p) for m, p in operations(live_api) if m != "GET"]
    with live_api.client(key) as client:
        for method, path in writes:
            response = request(client, method, path)
            if (method, path) in PREDICT_ONLY_ALLOWED:
                # let in, and the empty body refused
                assert response.status_code == PREDICT_ONLY_ALLOWED[method, path], response.text
            else:
                assert_refused(response, 403, key)
                assert f"'{scope_of(path)}' scope" in response.json()["error"]["message"]
        assert client.get("/models/shapes").status_code == 200
    record("predict_key_writes", routes=len(writes) - 1, let_in=0)


def test_unknown_and_revoked_keys_get_the_same_answer(live_api: LiveApi) -> None:
    engine = make_engine(live_api.settings["RCS_DATABASE_URL"])
    from service.auth.service import create_key

    with make_sessionmaker(engine)() as session:
        row, revoked = create_key(session, "to-revoke", ["train"])
        row.revoked_at = int(time.time())
        session.commit()
        stored = {k.key_hash for k in session.query(ApiKey)}
    engine.dispose()
    assert revoked not in str(stored) and API_KEY not in str(stored)  # only hashes at rest
    with httpx.Client(base_url=live_api.base_url, timeout=30) as client:
        unknown = client.get("/jobs", headers={"Authorization": "Bearer rcs_unknown_key_0000"})
        gone = client.get("/jobs", headers={"Authorization": f"Bearer {revoked}"})
    assert_refused(gone, 401, revoked)
    assert unknown.json() == gone.json()  # no oracle telling which keys exist


def test_keys_are_managed_over_the_api_and_revoked_at_once(live_api: LiveApi) -> None:
    """Issue 11 (7): keys could be neither listed nor revoked."""
    with live_api.client(API_KEY) as admin:
        created = admin.post("/keys", json={"name": "short-lived", "scopes": ["train"]})
        assert created.status_code == 201, created.text
        key, key_id = created.json()["key"], created.json()["id"]
        with live_api.client(key) as client:
            assert client.get("/jobs").status_code == 200
            refused = client.get("/keys")  # a train key cannot see the keys
            assert_refused(refused, 403, key)
            assert "'admin' scope" in refused.json()["error"]["message"]
            listing = admin.get("/keys").text
            assert key not in listing and API_KEY not in listing and key_id in listing
            started = time.monotonic()
            assert admin.delete(f"/keys/{key_id}").status_code == 200
            assert_refused(client.get("/jobs"), 401, key)  # the very next request
            revoke_ms = (time.monotonic() - started) * 1000
        bootstrap = [k for k in admin.get("/keys").json()["data"] if k["bootstrap"]]
        active_admins = [
            k
            for k in admin.get("/keys", params={"include_revoked": False}).json()["data"]
            if "admin" in k["scopes"]
        ]
        if len(active_admins) == 1:
            last = admin.delete(f"/keys/{bootstrap[0]['id']}")
            assert last.status_code == 409 and admin.get("/keys").status_code == 200
    record("key_revocation", keys_created=1, revoked=1, refused_after_ms=round(revoke_ms))


def test_secrets_are_not_in_the_api_log(live_api: LiveApi) -> None:
    with live_api.client() as client:
        client.get("/jobs", headers={"Authorization": f"Bearer {API_KEY}-wrong"})
        client.get("/readyz")
    log = live_api.process.log_path.read_text(errors="replace")
    for secret in (API_KEY, live_api.predict_key):
        assert secret not in log


PLACEHOLDER_ENVS = {
    "placeholder key": {"RCS_BOOTSTRAP_API_KEY": "changeme"},
    "short key": {"RCS_BOOTSTRAP_API_KEY": "tooshort"},
    "auth disabled": {"RCS_AUTH_DISABLED": "true"},
    "placeholder db password": {
        "RCS_DATABASE_URL": "postgresql+psycopg://rcs:changeme@127.0.0.1:1/rcs"
    },
    "empty db password": {"RCS_DATABASE_URL": "postgresql+psycopg://rcs:@127.0.0.1:1/rcs"},
    "placeholder broker password": {"RCS_BROKER_URL": "redis://:secret@127.0.0.1:1/0"},
}


@pytest.mark.parametrize("values", list(PLACEHOLDER_ENVS.values()), ids=list(PLACEHOLDER_ENVS))
def test_placeholder_settings_are_refused(values: dict[str, str]) -> None:
    fields = {k.removeprefix("RCS_").lower(): v for k, v in values.items()}
    with pytest.raises(ValidationError) as refused:
        Settings(env="production", **fields)  # type: ignore[arg-type]
    assert "changeme" not in str(refused.value) and ":secret@" not in str(refused.value)
    Settings(env="local", **fields)  # type: ignore[arg-type]


@pytest.mark.slow  # two process starts, about 20 s each on a busy machine
@pytest.mark.parametrize(
    ("kind", "case"), [("api", "placeholder key"), ("worker", "placeholder broker password")]
)
def test_the_processes_refuse_to_start_with_placeholder_secrets(
    kind: str, case: str, tmp_path: Path
) -> None:
    settings = {
        "RCS_ENV": "production",
        "RCS_DATABASE_URL": f"sqlite:///{tmp_path / 'rcs.db'}",
        "RCS_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        "RCS_WORK_DIR": str(tmp_path / "work"),
        "RCS_BOOTSTRAP_API_KEY": API_KEY,
        **PLACEHOLDER_ENVS[case],
    }
    log = tmp_path / f"{kind}.log"
    if kind == "api":
        process = api_process(settings, free_port(), log).start()
    else:
        process = worker_process(settings, log).start()
    assert process.popen is not None
    code = process.popen.wait(90)
    process.stop()
    text = log.read_text(errors="replace")
    assert code != 0, text[-2000:]
    assert "changeme" not in text and ":secret@" not in text and API_KEY not in text
    assert "placeholder" in text
    record("placeholder_secrets", process=kind, configuration=case, started=0)
