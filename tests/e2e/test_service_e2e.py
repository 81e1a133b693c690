"""End to end through the real API and worker processes (Redis; SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack
from tests.live import ok, wait_for
from tests.service.support import b64, finetune_body, png_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(stack: Stack) -> dict[str, Any]:
    return stack.shapes_dataset()


def job_state(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(ok(client.get(f"/jobs/{job_id}")))


def finished(client: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = job_state(client, job_id)
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def test_finetune_then_predict_with_the_registered_version(
    stack: Stack, dataset: dict[str, Any]
) -> None:
    with stack.client() as client:
        texts = json.loads((stack.data / "descriptions.json").read_text())
        stored = ok(client.post("/descriptions", json={"name": "shapes", "descriptions": texts}))
        body = finetune_body(dataset["id"], descriptions=stored["id"])
        job = ok(client.post("/finetune", json=body))
        assert job["status"] == "queued"
        done = wait_for(lambda: finished(client, job["id"]), 50, "the job to finish", stack)
        assert done["status"] == "succeeded", (done, stack.logs())
        assert done["progress"]["step"] == done["progress"]["total_steps"] == 4
        ref = done["fine_tuned_model"]
        name, version = ref.split("/")

        card = ok(client.get(f"/models/{name}/versions/{version}"))
        assert card["status"] == "READY" and card["job_id"] == job["id"]
        assert card["dataset"]["fingerprint"] == dataset["fingerprint"]
        assert card["descriptions"] == {
            k: v if isinstance(v, list) else [v] for k, v in texts.items()
        }

        with client.stream("GET", f"/jobs/{job['id']}/events", params={"stream": "true"}) as sse:
            text = "".join(sse.iter_text())
        assert "event: metrics" in text and "successfully completed" in text
        assert 'event: end\ndata: {"status": "succeeded"}' in text
        assert ok(client.get(f"/jobs/{job['id']}/checkpoints"))["data"][0]["step_number"] == 4

        image = stack.data / "ood_test" / "circle" / "0000.png"
        files = [("files", ("circle.png", image.read_bytes(), "image/png"))]
        prediction = ok(client.post("/predict", data={"model": ref, "top_k": "2"}, files=files))
        assert prediction["model"] == ref
        labels = prediction["data"][0]["labels"]
        assert len(labels) == 2 and labels[0]["label"] in card["classes"]
        by_name = ok(
            client.post("/predict", json={"model": name, "images": [b64(image.read_bytes())]})
        )
        assert by_name["model"] == ref


def test_idempotent_create_and_cancel_of_a_running_job(
    stack: Stack, dataset: dict[str, Any]
) -> None:
    body = finetune_body(dataset["id"], hyperparameters={"max_steps": 100000, "batch_size": 8})
    headers = {"Idempotency-Key": "e2e-long-job"}
    with stack.client() as client:
        first = ok(client.post("/finetune", json=body, headers=headers))
        second = ok(client.post("/finetune", json=body, headers=headers))
        assert second["id"] == first["id"]
        listed = ok(client.get("/jobs", params={"limit": 100}))["data"]
        assert sum(j["id"] == first["id"] for j in listed) == 1

        def running() -> bool:
            job = job_state(client, first["id"])
            return job["status"] == "running" and job["progress"]["step"] > 0

        wait_for(running, 40, "the job to run", stack)
        cancelled = ok(client.post(f"/jobs/{first['id']}/cancel"))
        assert cancelled["status"] == "cancelled"

        def stopped() -> bool:
            events = ok(client.get(f"/jobs/{first['id']}/events", params={"limit": 1000}))
            return any(e["message"] == "Training stopped" for e in events["data"])

        wait_for(stopped, 30, "the worker to stop training", stack)
        assert job_state(client, first["id"])["status"] == "cancelled"
        again = client.post(f"/jobs/{first['id']}/cancel")
        assert again.status_code == 409


def test_a_job_whose_worker_was_killed_resumes_on_a_new_worker(
    stack: Stack, dataset: dict[str, Any]
) -> None:
    body = finetune_body(
        dataset["id"],
        hyperparameters={"max_steps": 60, "batch_size": 8},
        registered_model_name="resumed",
    )
    with stack.client() as client:
        job = ok(client.post("/finetune", json=body))
        wait_for(
            lambda: job_state(client, job["id"])["progress"]["step"] >= 6, 40, "progress", stack
        )
        stack.restart_worker(kill=True)
        done = wait_for(lambda: finished(client, job["id"]), 55, "the resumed job", stack)
        assert done["status"] == "succeeded", (done, stack.logs())
        events = ok(client.get(f"/jobs/{job['id']}/events", params={"limit": 1000}))["data"]
        starts = [e["message"] for e in events if e["message"].startswith("Job started")]
        assert len(starts) == 2 and "(attempt 2)" in starts[1]
        steps = [e["data"]["step"] for e in events if e["type"] == "metrics"]
        # Resumed from a checkpoint: the second attempt does not begin at step 1 again.
        assert steps.count(1) == 1
        versions = ok(client.get("/models/resumed"))["latest_versions"]
        assert [v["version"] for v in versions] == [1]


def test_errors_over_http(stack: Stack, dataset: dict[str, Any]) -> None:
    with stack.client(key=None) as anonymous:
        assert anonymous.get("/jobs").status_code == 401
        assert anonymous.get("/healthz").status_code == 200
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"
        assert "rcs_http_requests_total" in anonymous.get("/metrics").text
    with stack.client() as client:
        bad = client.post("/finetune", json=finetune_body(dataset["id"], wise_ft={"alphas": [3]}))
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "wise_ft.alphas"
        missing = client.post("/finetune", json=finetune_body("ds-nope"))
        assert missing.status_code == 422 and missing.json()["error"]["param"] == "dataset"
        unknown = client.post("/predict", json={"model": "ghost", "images": [b64(png_bytes())]})
        assert (
            unknown.status_code == 404 and "no model 'ghost'" in unknown.json()["error"]["message"]
        )
        files = [("files", ("broken.png", b"\x89PNG nope", "image/png"))]
        broken = client.post("/predict", data={"model": "shapes"}, files=files)
        assert broken.status_code == 422 and "'broken.png'" in broken.json()["error"]["message"]
        big = client.post("/predict", json={"model": "shapes", "images": [b64(bytes(300000))]})
        assert big.status_code == 413
        assert client.get("/jobs/ftjob-000000000000000000000000").status_code == 404
        outside = client.post("/datasets", json={"name": "x", "path": "/etc"})
        assert outside.status_code == 422 and outside.json()["error"]["param"] == "path"


def test_tiny_demo_runs_on_sqlite_with_the_sqlite_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo-tiny`'s flow: no servers, the real API and worker processes."""
    from tools.demo import main

    args = ["--tiny", "--workdir", str(tmp_path / "demo"), "--per-class", "6", "--epochs", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    # The table of a random-init model says what it shows, and the plot is written.
    assert "NOTE: This is the plumbing check" in out and "not robustness" in out
    assert (tmp_path / "demo" / "effective_robustness.png").stat().st_size > 10_000


def test_demo_on_real_images_with_the_offline_backbone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo`'s flow at half size and 1 epoch: the offline backbone, the corruption task,
    zero-shot, FLYP and DRM jobs, the table through POST /predict, the reports and the plot."""
    from tools.demo import main

    assert main(["--quick", "--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    table = out[out.index("top-1 through POST /predict") :]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:5]}
    assert set(rows) == {"zero-shot", "FLYP", "DRM"}
    zeroshot_id = float(rows["zero-shot"][4])
    assert zeroshot_id > 0.8  # a real pretrained backbone, far above chance (0.1)
    for method in ("FLYP", "DRM"):
        alpha, head, *figures = rows[method][-7:]
        id_top1, *ood = (float(v) for v in figures)
        assert 0.0 <= float(alpha) <= 1.0 and head in ("dual", "default")
        assert id_top1 > 0.8 and all(0.3 < v <= 1.0 for v in ood)
    assert "NOTE" not in table
    # The closing text: this run's differences with intervals over its images, and the
    # benchmark's seeds under the default rule (the committed study).
    shows = out[out.index("what this run shows") :].splitlines()[1:4]
    assert [line.split(":")[0].strip() for line in shows] == [
        "DRM + WiSE-FT - FLYP + WiSE-FT",
        "DRM + WiSE-FT - zero-shot",
        "FLYP + WiSE-FT - zero-shot",
    ]
    assert all("95%" in line for line in shows)
    assert "drm-weight - flyp, animals-corruption: ID" in out
    assert out.count("/report") == 3
    assert (tmp_path / "demo" / "effective_robustness.png").stat().st_size > 10_000
