"""Fine-tuning jobs through the HTTP API, for the process-fault and chaos tests."""

from __future__ import annotations

from typing import Any

import httpx

from tests.live import ok
from tests.service.support import finetune_body

TERMINAL = ("succeeded", "failed", "cancelled")


def submit(
    client: httpx.Client, dataset: dict[str, Any], name: str, steps: int, **body: Any
) -> str:
    """A job of ``steps`` steps registering ``name``; ``body`` overrides fields (``method``)."""
    request = finetune_body(
        dataset["id"],
        hyperparameters={"max_steps": steps, "batch_size": 8},
        registered_model_name=name,
        **body,
    )
    return str(ok(client.post("/finetune", json=request))["id"])


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(ok(client.get(f"/jobs/{job_id}")))


def events(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    """All of a job's events, oldest first (every page)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        page = ok(client.get(f"/jobs/{job_id}/events", params=params))
        found += page["data"]
        if not page["has_more"] or not page["data"]:
            return found
        params["after"] = page["data"][-1]["id"]


def finished(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    state = job(client, job_id)
    return state if state["status"] in TERMINAL else None


def one_ready_version(client: httpx.Client, name: str, job_id: str) -> None:
    versions = ok(client.get(f"/models/{name}/versions"))["data"]
    assert [(v["version"], v["status"], v["job_id"]) for v in versions] == [(1, "READY", job_id)]
