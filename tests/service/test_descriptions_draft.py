"""POST /descriptions/draft against a real local HTTP server speaking OpenAI's chat completions
(started here, in a thread): a good answer is stored as a pool with its provenance and scored;
a malformed, slow, refusing or huge answer is one clear error and nothing is stored."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.queue import TASK_EVALUATE
from tests.service.support import FakeBroker

KEY = "sk-test-secret-key-0123456789"
CLASSES = ["circle", "cross", "square", "triangle"]


def chat(content: str) -> dict[str, Any]:
    return {
        "object": "chat.completion",
        "choices": [{"message": {"role": "assistant", "content": content}}],
    }


def drafts(**override: Any) -> dict[str, Any]:
    return {
        c: [f"{c}, drawn with a clear outline", f"{c}, a flat shape"] for c in CLASSES
    } | override


class LanguageModel(BaseHTTPRequestHandler):
    """Answers as ``self.server.mode`` says; records each request's body and headers."""

    server: Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append(
            {"path": self.path, "body": body, "auth": self.headers["Authorization"]}
        )
        mode = self.server.mode
        if mode == "slow":
            time.sleep(2)
        status, payload = ANSWERS[mode](self.headers["Authorization"] or "")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_: Any) -> None:
        pass


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


FENCED = "Here you go:\n```json\n" + json.dumps(drafts(CROSS=["cross, two bars"])) + "\n```\nEnjoy!"
ANSWERS = {
    "ok": lambda _: (200, _json(chat(FENCED))),
    "slow": lambda _: (200, _json(chat(json.dumps(drafts())))),
    "prose": lambda _: (200, _json(chat("I am sorry, I cannot describe shapes."))),
    "missing": lambda _: (200, _json(chat(json.dumps({"circle": ["circle, round"]})))),
    "non_text": lambda _: (200, _json(chat(json.dumps(drafts(cross=[3, {"a": 1}, ""]))))),
    "not_chat": lambda _: (200, _json({"error": "no"})),
    "not_json": lambda _: (200, b"<html>gateway</html>"),
    "refuse": lambda auth: (401, _json({"error": {"message": f"bad key {auth}"}})),
    "broken": lambda _: (500, b"internal error"),
    "huge": lambda _: (200, _json(chat("x" * 300_000))),
}


class Server(ThreadingHTTPServer):
    mode = "ok"
    seen: list[dict[str, Any]]


@pytest.fixture(scope="module")
def language_model() -> Iterator[Server]:
    server = Server(("127.0.0.1", 0), LanguageModel)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings_overrides(language_model: Server) -> dict[str, Any]:
    language_model.mode, language_model.seen = "ok", []
    host, port = language_model.server_address[:2]
    return {
        "llm_base_url": f"http://{host}:{port}/v1/",
        "llm_model": "tiny-llm",
        "llm_api_key": KEY,
        "llm_timeout_s": 0.5,
        "llm_max_response_bytes": 100_000,
        "max_score_candidates": 40,
    }


def draft(client: TestClient, registered: dict[str, Any], **extra: Any) -> Any:
    body = {"dataset": registered["id"], "model": "test-tiny-vit", "name": "drafts"} | extra
    return client.post("/descriptions/draft", json=body)


def test_drafts_are_stored_as_a_pool_with_provenance_and_scored(
    client: TestClient, broker: FakeBroker, dataset: dict[str, Any], language_model: Server
) -> None:
    response = draft(client, dataset, per_class=2, domain="synthetic drawings")
    assert response.status_code == 200, response.text
    made = response.json()
    pool, evaluation = made["description_set"], made["evaluation"]
    assert pool["status"] == "candidates" and pool["name"] == "drafts"
    # Keys matched by name key ("CROSS"), prose and fences around the JSON ignored.
    assert pool["descriptions"] == drafts(cross=["cross, two bars"])
    provenance = pool["provenance"]
    assert provenance["source"] == "draft" and provenance["model"] == "tiny-llm"
    assert (
        provenance["drafted_at"] <= time.time()
        and "Never describe the background" in provenance["prompt"]
    )
    assert evaluation["kind"] == "candidates" and evaluation["description_set"] == pool["id"]
    assert broker.sent == [(TASK_EVALUATE, {"payload": {"evaluation_id": evaluation["id"]}})]
    [request] = language_model.seen
    assert request["path"] == "/v1/chat/completions" and request["auth"] == f"Bearer {KEY}"
    assert request["body"]["model"] == "tiny-llm"
    prompt = request["body"]["messages"][-1]["content"]
    assert all(c in prompt for c in CLASSES) and "synthetic drawings" in prompt
    assert "Start every sentence with the class name" in prompt
    # The key is never echoed: not in the stored set, not in the answer.
    assert KEY not in response.text
    # Drafts are not trained on until accepted.
    job = {"model": "test-tiny-vit", "dataset": dataset["id"], "descriptions": "drafts",
           "registered_model_name": "m"}  # fmt: skip
    assert client.post("/finetune", json=job).status_code == 422


@pytest.mark.parametrize(
    ("mode", "status", "words"),
    [
        ("slow", 504, ["did not answer within 0.5 s", "RCS_LLM_TIMEOUT_S"]),
        ("prose", 502, ["no JSON object", "I am sorry"]),
        ("missing", 502, ["no usable description", "'cross'"]),
        ("non_text", 502, ["no usable description", "'cross'"]),
        ("not_chat", 502, ["not a chat completion"]),
        ("not_json", 502, ["not JSON", "gateway"]),
        ("refuse", 502, ["refused the request (401)", "bad key Bearer ***"]),
        ("broken", 502, ["refused the request (500)", "internal error"]),
        ("huge", 502, ["more than 100000 bytes", "RCS_LLM_MAX_RESPONSE_BYTES"]),
    ],
)
def test_every_failure_is_a_clear_error_and_nothing_is_stored(
    client: TestClient,
    broker: FakeBroker,
    dataset: dict[str, Any],
    language_model: Server,
    mode: str,
    status: int,
    words: list[str],
) -> None:
    language_model.mode = mode
    response = draft(client, dataset)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    for word in words:
        assert word in error["message"], error
    assert KEY not in response.text
    assert client.get("/descriptions").json()["data"] == []
    assert client.get("/evaluations").json()["data"] == [] and broker.sent == []


def test_bad_requests_are_refused_before_the_model_is_asked(
    client: TestClient, dataset: dict[str, Any], language_model: Server
) -> None:
    for extra, param in (
        ({"model": "no-such-arch"}, "model"),
        ({"dataset": "ds-none"}, "dataset"),
        ({"per_class": 11}, "per_class"),
        ({"per_class": 0}, None),
        ({"per_class": 21}, None),
        ({"domain": "x" * 501}, None),
    ):
        response = draft(client, dataset, **extra)
        assert response.status_code == 422, (extra, response.text)
        if param:
            assert response.json()["error"]["param"] == param
    assert language_model.seen == []


def test_without_the_settings_the_route_names_them(
    client: TestClient, dataset: dict[str, Any], language_model: Server
) -> None:
    settings = client.app.state.ctx.settings  # type: ignore[attr-defined]
    client.app.state.ctx.settings = settings.model_copy(update={"llm_base_url": None})  # type: ignore[attr-defined]
    try:
        response = draft(client, dataset)
    finally:
        client.app.state.ctx.settings = settings  # type: ignore[attr-defined]
    assert response.status_code == 501
    error = response.json()["error"]
    assert error["code"] == "llm_not_configured" and "RCS_LLM_BASE_URL" in error["message"]
    assert "RCS_LLM_MODEL" not in error["message"] and language_model.seen == []
