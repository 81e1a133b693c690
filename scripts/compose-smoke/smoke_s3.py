"""The steps of `make compose-smoke-s3`: the deployment across "machines" that share no volume.

docker-compose.yml + docker-compose.cpu.yml + docker-compose.s3.yml: an S3 server as a service
(moto's), the bucket created, the API without the artifacts or work volume, and two CPU workers
(`worker-cpu`, `worker-cpu-b`) with no volume at all; they share PostgreSQL, Redis and the
bucket. Through the published API port, as smoke.py does: a key; the shapes dataset uploaded as
an archive (to the bucket; registering a server path is refused); descriptions; a DRM job run to
completion on `worker-cpu`; `POST /predict` from the API, which has only the bucket; a second
job whose worker container is `docker kill`-ed after a checkpoint is in the bucket's index, and
`worker-cpu-b`, started only then, takes it over when the lease runs out, downloads the dataset
and the checkpoint, and finishes it from the step after that checkpoint (step 1 trained once,
one READY version, one completion). Then `down -v` (smoke.py's).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from smoke import (  # noqa: E402
    CLASSES,
    FILES,
    TERMINAL,
    Api,
    SmokeError,
    Stack,
    attempts,
    events,
    finetune,
    follow,
    log,
    main,
    one_ready_version,
    run,
    run_offline,
    step,
    wait_for,
)

S3_FILES = [*FILES, "-f", "docker-compose.s3.yml"]
BUCKET = "rcs-smoke"


def upload(api: Api, name: str, archive: Path) -> Any:
    """``POST /datasets/upload``: a multipart form with the archive and the name."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'.encode(),
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{archive.name}"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        + archive.read_bytes()
        + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    request = urllib.request.Request(
        api.base + "/datasets/upload", data=b"".join(parts), method="POST"
    )
    request.add_header("Authorization", f"Bearer {api.key}")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise SmokeError(f"upload: HTTP {error.code}: {error.read()[:600]!r}") from None


def bucket_index(stack: Stack, job_id: str) -> dict[str, Any]:
    """The job's checkpoint index in the bucket, read from a container on the stack's network."""
    code = (
        "import os, boto3; "
        "s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL']); "
        f"print(s3.get_object(Bucket='{BUCKET}', Key='smoke/jobs/{job_id}/checkpoints.json')"
        "['Body'].read().decode())"
    )
    out = run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            f"{stack.project}_default",
            *("-e", f"AWS_ACCESS_KEY_ID={stack.env['AWS_ACCESS_KEY_ID']}"),
            *("-e", f"AWS_SECRET_ACCESS_KEY={stack.env['AWS_SECRET_ACCESS_KEY']}"),
            *("-e", "AWS_DEFAULT_REGION=us-east-1", "-e", "AWS_ENDPOINT_URL=http://s3:9000"),
            "robust-clip-s3:smoke",
            *("python", "-c", code),
        ],
        quiet=True,
    )
    return dict(json.loads(out.strip().splitlines()[-1]))


def run_stack_s3(stack: Stack, figures: dict[str, float], state: Path) -> None:
    began = time.monotonic()
    step("build the API image (docker compose build api)", lambda: stack("build", "api"))
    step("build the rest, the S3 server's image too", lambda: stack("build"))
    figures["build_s"] = time.monotonic() - began

    began = time.monotonic()
    # The second worker starts only after the first is killed: it is the "other machine".
    step(
        "up -d (worker-cpu-b not yet)",
        lambda: stack("up", "-d", "--scale", "worker-cpu-b=0", quiet=True),
    )
    services = ("postgres", "redis", "s3", "api", "worker-cpu")

    def healthy() -> bool | None:
        states = {s: stack.health(s) for s in services}
        if any(s.startswith(("exited", "dead")) for s in states.values()):
            raise SmokeError(f"a service stopped: {states}")
        return True if all(s == "running healthy" for s in states.values()) else None

    step(
        f"every service healthy ({', '.join(services)})",
        lambda: wait_for("health", healthy, 600, 2.0),
    )
    figures["healthy_s"] = time.monotonic() - began
    for service in ("api", "worker-cpu"):
        mounts = run(
            ["docker", "inspect", "-f", "{{len .Mounts}}", stack.container(service)], quiet=True
        ).strip()
        log(f"   {service}: {mounts} mounts")
        if mounts != "0":
            raise SmokeError(f"{service} has {mounts} mounts; expected none")

    boot = Api(stack.base, stack.env["RCS_BOOTSTRAP_API_KEY"])
    created = step(
        "create an API key",
        lambda: boot.post("/keys", {"name": "smoke", "scopes": ["predict", "train"]}),
    )
    api = Api(stack.base, created["key"])

    def write_archive() -> tuple[Path, Path]:
        tmp = Path(tempfile.mkdtemp(prefix="rcs-smoke-s3-", dir=state))
        run_offline(
            [
                *("--user", f"{os.getuid()}:{os.getgid()}", "-v", f"{tmp}:/out"),
                "robust-clip-api:smoke",
                "python",
                "-c",
                "from models.data.synthetic import write_shapes_dataset; "
                "write_shapes_dataset('/out/shapes', per_class=32, size=32)",
            ]
        )
        # A zip: the stand-in Python (Debian's 3.11.2) has no tarfile extraction filter, which
        # the API's .tar unpacking (service/datasets/archives.py) asks for.
        archive = tmp / "shapes.zip"
        with zipfile.ZipFile(archive, "w") as packed:
            for path in sorted((tmp / "shapes").rglob("*")):
                packed.write(path, path.relative_to(tmp).as_posix())
        return archive, tmp / "shapes" / "test"

    archive, test_root = step("write the shapes dataset as a .zip", write_archive)
    dataset = step(
        "upload it (POST /datasets/upload): stored in the bucket",
        lambda: upload(api, "shapes", archive),
    )
    log(f"   dataset {dataset['id']}: {dataset['classes']}")
    refused = api.call("POST", "/datasets", {"name": "p", "path": "/datasets/x"}, expect=422)
    log(f"   a server path is refused (422): {refused['error']['message'][:90]}...")
    texts = {c: [f"a {c}", f"a {c} shape"] for c in CLASSES}
    described = api.post("/descriptions", {"name": "shapes", "descriptions": texts})

    began = time.monotonic()
    job_id = step(
        "DRM job on worker-cpu",
        lambda: finetune(api, dataset["id"], described["id"], "shapes-drm", 60),
    )
    step("the job runs to completion", lambda: follow(api, job_id, 900))
    figures["job_s"] = time.monotonic() - began
    one_ready_version(api, "shapes-drm", job_id)

    def predict() -> None:
        files = [sorted((test_root / label).iterdir())[0] for label in CLASSES]
        body = {
            "model": "shapes-drm",
            "images": [base64.b64encode(p.read_bytes()).decode() for p in files],
        }
        out = api.post("/predict", body)
        log(f"   {len(out['data'])} images classified by {out['model']}, served from the bucket")

    step("POST /predict from the API (no artifacts volume)", predict)

    kill_id = step(
        "a second DRM job (checkpoints every 10 steps)",
        lambda: finetune(api, dataset["id"], described["id"], "shapes-kill", 400),
    )

    def indexed() -> int | None:
        job = api.get(f"/jobs/{kill_id}")
        if job["status"] in TERMINAL:
            raise SmokeError(f"job {kill_id} ended before the kill: {job['status']}")
        saved = api.get(f"/jobs/{kill_id}/checkpoints")["data"]
        return 1 if max((c["step_number"] for c in saved), default=0) >= 20 else None

    step(
        "train past a checkpoint in the bucket (step 20 or later)",
        lambda: wait_for("a checkpoint", indexed, 600, 0.25),
    )
    killed_at = time.monotonic()
    step(
        "docker kill worker-cpu",
        lambda: run(["docker", "kill", stack.container("worker-cpu")], quiet=True),
    )
    checkpoint = int(bucket_index(stack, kill_id)["latest"])
    log(f"   the bucket's index names step {checkpoint}")
    step(
        "start worker-cpu-b, the other machine (worker-cpu stays dead)",
        lambda: stack(
            "up", "-d", "--no-deps", "--scale", "worker-cpu-b=1", "worker-cpu-b", quiet=True
        ),
    )

    def resumed() -> bool | None:
        return True if len(attempts(api, kill_id)) >= 2 else None

    step("worker-cpu-b takes the job over", lambda: wait_for("attempt 2", resumed, 300))
    figures["resume_s"] = time.monotonic() - killed_at
    step("the job runs to completion", lambda: follow(api, kill_id, 900))
    figures["recovered_s"] = time.monotonic() - killed_at
    runs = attempts(api, kill_id)
    for message, steps in runs:
        log(f"   {message}: steps {steps[0] if steps else '-'}..{steps[-1] if steps else '-'}")
    all_steps = [s for _, steps in runs for s in steps]
    if len(runs) != 2 or not runs[1][1] or all_steps.count(1) != 1:
        raise SmokeError(f"expected 2 attempts, step 1 once: {runs}")
    # The second attempt ran on worker-cpu-b: its start names that container's host name.
    other = stack.container("worker-cpu-b")[:12]
    if other not in runs[1][0]:
        raise SmokeError(f"attempt 2 did not run on worker-cpu-b ({other}): {runs[1][0]}")
    if runs[1][1][0] != checkpoint + 1:
        raise SmokeError(f"attempt 2 began at {runs[1][1][0]}, not after checkpoint {checkpoint}")
    one_ready_version(api, "shapes-kill", kill_id)
    completed = [e for e in events(api, kill_id) if "successfully completed" in e["message"]]
    if len(completed) != 1:
        raise SmokeError(f"{len(completed)} completion events")
    log(f"   resumed on worker-cpu-b from the bucket's checkpoint {checkpoint}; one completion")


VARIANT = (
    "robust-clip-smoke-s3",
    S3_FILES,
    {
        "AWS_ACCESS_KEY_ID": "smoke" + secrets.token_hex(6),
        "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(24),
        "RCS_S3_BUCKET": BUCKET,
        "RCS_S3_PREFIX": "smoke",
        # scripts/compose-smoke.sh's cleanup of an interrupted run reads it from the env file.
        "RCS_SMOKE_EXTRA_FILES": "-f docker-compose.s3.yml",
    },
    run_stack_s3,
)

if __name__ == "__main__":
    sys.exit(main(variant=VARIANT))
