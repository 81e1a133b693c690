"""The steps of `make compose-smoke` (scripts/compose-smoke.sh starts the engine and calls this).

Standard library only: it drives Docker Compose and Docker by their command lines and the
service by its public HTTP API on the published port, as a user would. Each step prints its
time; the first failure stops the run (non-zero exit) after the stack's logs are shown, and the
stack is always brought down with its volumes (``down -v``).

What it shows, on the CPU profile (docker-compose.yml + docker-compose.cpu.yml):
build; up to healthy; an API key created with the bootstrap key; a dataset (synthetic shapes
written into the ``datasets`` volume by the API image itself) registered by its path; a
description set; a DRM job run to completion on the worker container, one READY version;
``POST /predict`` on test images; a second DRM job whose worker container is ``docker kill``-ed
after a checkpoint, and that after ``docker compose up -d`` resumes from that checkpoint (its
second attempt's first step is the one after it; step 1 trained once) and succeeds exactly once
(one READY version, keyed by the job); ``down -v``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
FILES = ["-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
DEFAULTS = {
    "PYTHON_IMAGE": ("python:3.11-slim", "rcs-standin/python:3.11"),
    "REDIS_IMAGE": ("redis:7", "rcs-standin/redis:7"),
    "POSTGRES_IMAGE": ("postgres:16", "rcs-standin/postgres:16"),
}
TERMINAL = ("succeeded", "failed", "cancelled")
# The tiny random-init architecture of the tests (models/model_configs): nothing to download.
MODEL = "test-tiny-vit"
CLASSES = ("circle", "square", "triangle", "cross")
# The run's start (scripts/compose-smoke.sh passes its own, so both print one clock).
START = time.monotonic() - (time.time() - float(os.environ.get("RCS_SMOKE_T0") or time.time()))
T = TypeVar("T")


class SmokeError(Exception):
    pass


def stamp() -> str:
    return f"[{time.monotonic() - START:6.1f}s]"


def log(message: str) -> None:
    print(f"{stamp()} {message}", flush=True)


def step(title: str, action: Callable[[], T]) -> T:
    print(f"{stamp()} == {title}", flush=True)
    began = time.monotonic()
    result = action()
    print(f"{stamp()}    ok: {title} ({time.monotonic() - began:.1f} s)", flush=True)
    return result


def run_offline(args: list[str], *, quiet: bool = False) -> str:
    """``docker run --rm --network none`` with ``args`` (options, image, command): a one-off
    container with no network, for reading and writing the stack's volumes."""
    return run(["docker", "run", "--rm", "--network", "none", *args], quiet=quiet)


def run(args: list[str], *, quiet: bool = False, check: bool = True) -> str:
    done = subprocess.run(
        args, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    if check and done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-40:])
        raise SmokeError(f"{shlex.join(args)} exited {done.returncode}:\n{tail}")
    if not quiet and done.stdout.strip():
        for line in done.stdout.strip().splitlines()[-6:]:
            print(f"           {line}", flush=True)
    return done.stdout


class Stack:
    def __init__(
        self, compose: list[str], project: str, env: dict[str, str], files: list[str] = FILES
    ) -> None:
        self.compose = [*compose, "-p", project, *files]
        self.project = project
        self.env = env
        self.base = f"http://127.0.0.1:{env['RCS_API_PORT']}"

    def __call__(self, *args: str, quiet: bool = False, check: bool = True) -> str:
        os.environ.update(self.env)
        return run([*self.compose, *args], quiet=quiet, check=check)

    def container(self, service: str) -> str:
        cid = self("ps", "-q", service, quiet=True).strip()
        if not cid:
            raise SmokeError(f"no {service} container")
        return cid

    def health(self, service: str) -> str:
        cid = self("ps", "-q", service, quiet=True).strip()
        if not cid:
            return "absent"
        out = run(
            [
                "docker",
                "inspect",
                "-f",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                cid,
            ],
            quiet=True,
            check=False,
        )
        return out.strip() or "absent"


class Api:
    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.key = key

    def call(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode(errors="replace")
        if status != expect and not (expect == 200 and status in (200, 201, 202)):
            raise SmokeError(f"{method} {path}: HTTP {status}: {text[:600]}")
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.call("POST", path, body)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise SmokeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def image_present(name: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", name], capture_output=True)
    return done.returncode == 0


def base_images() -> dict[str, str]:
    """Each base image: as set, else the usual default when the engine has it, else a stand-in."""
    chosen: dict[str, str] = {}
    for variable, (default, standin) in DEFAULTS.items():
        if os.environ.get(variable):
            chosen[variable] = os.environ[variable]
        elif image_present(default):
            chosen[variable] = default
        else:
            chosen[variable] = standin
    missing = [chosen[v] for v in DEFAULTS if chosen[v] == DEFAULTS[v][1]]
    if missing:
        log(
            f"   no {', '.join(DEFAULTS[v][0] for v in DEFAULTS if chosen[v] in missing)} here: "
            "local stand-ins (scripts/compose-smoke/standins.sh)"
        )
        run(["bash", str(HERE / "standins.sh"), *(chosen[v] for v in DEFAULTS)])
    for variable, image in chosen.items():
        log(f"   {variable}={image}")
    return chosen


def image_size(name: str) -> str:
    size = int(run(["docker", "image", "inspect", "-f", "{{.Size}}", name], quiet=True))
    return f"{size / 1e9:.2f} GB"


def events(api: Api, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    path = f"/jobs/{job_id}/events?limit=1000"
    while True:
        page = api.get(path)
        found += page["data"]
        if not page["has_more"] or not page["data"]:
            return found
        path = f"/jobs/{job_id}/events?limit=1000&after={page['data'][-1]['id']}"


def attempts(api: Api, job_id: str) -> list[tuple[str, list[int]]]:
    """Each attempt's start message and the training steps it reported, oldest first."""
    found: list[tuple[str, list[int]]] = []
    for event in events(api, job_id):
        if event["message"].startswith("Job started on"):
            found.append((event["message"], []))
        elif event["type"] == "metrics" and found:
            data = event.get("data") or {}
            if data.get("event", "step") == "step" and "step" in data:
                found[-1][1].append(int(data["step"]))
    return found


def finetune(api: Api, dataset: str, descriptions: str, name: str, steps: int) -> str:
    body = {
        "model": MODEL,
        "dataset": dataset,
        "descriptions": descriptions,
        "method": {"type": "drm", "objective": {"wrm": "weight", "lam": 1.0}},
        "hyperparameters": {"max_steps": steps, "batch_size": 16, "learning_rate": 5e-4},
        "wise_ft": {"alphas": [0.0, 0.5, 1.0]},
        "head": {"templates": "single"},
        "registered_model_name": name,
        "seed": 0,
    }
    job = api.post("/finetune", body)
    log(f"   job {job['id']} ({job['method']['type']}, {steps} steps) {job['status']}")
    return str(job["id"])


def follow(api: Api, job_id: str, timeout: float) -> dict[str, Any]:
    last = [-1]

    def done() -> dict[str, Any] | None:
        job = api.get(f"/jobs/{job_id}")
        step = (job.get("progress") or {}).get("step") or 0
        if step >= last[0] + 10 or job["status"] in TERMINAL:
            log(f"   {job['status']}, step {step}/{(job.get('progress') or {}).get('total_steps')}")
            last[0] = step
        return job if job["status"] in TERMINAL else None

    job = wait_for(f"job {job_id}", done, timeout, every=2.0)
    if job["status"] != "succeeded":
        raise SmokeError(f"job {job_id} {job['status']}: {job.get('error')}")
    return job


def one_ready_version(api: Api, name: str, job_id: str) -> None:
    versions = api.get(f"/models/{name}/versions")["data"]
    seen = [(v["version"], v["status"], v["job_id"]) for v in versions]
    if seen != [(1, "READY", job_id)]:
        raise SmokeError(f"{name}: expected one READY version of job {job_id}, got {seen}")
    log(f"   registry: {name} has one version, v1 READY, from job {job_id}")


RunStack = Callable[["Stack", dict[str, float], Path], None]


def smoke(
    compose: list[str],
    state: Path,
    variant: tuple[str, list[str], dict[str, str], RunStack] | None = None,
) -> dict[str, float]:
    """Build, up, ``_run_stack``, down -v. ``variant`` (smoke_s3.py): another project name,
    compose files, extra settings and steps; None: this file's own."""
    name, files, extra, run_stack = variant or ("robust-clip-smoke", FILES, {}, _run_stack)
    figures: dict[str, float] = {}
    project = os.environ.get("RCS_SMOKE_PROJECT", name)
    images = step("base images", base_images)
    env = {
        **images,
        "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
        "RCS_BOOTSTRAP_API_KEY": "rcs_smoke_" + secrets.token_urlsafe(24),
        "RCS_API_ADDRESS": "127.0.0.1",
        "RCS_API_PORT": os.environ.get("RCS_API_PORT") or str(free_port()),
        "RCS_IMAGE_TAG": "smoke",
        # A killed worker's job is taken over after 20 s instead of 5 minutes; checkpoints
        # every 10 steps instead of 200, so the kill lands after one.
        "RCS_LEASE_S": "20",
        "RCS_CHECKPOINT_EVERY": "10",
        # The CPU profile's limits: a share of a 2-core machine others use too.
        "RCS_WORKER_CPUS": os.environ.get("RCS_WORKER_CPUS", "1"),
        "RCS_API_CPUS": os.environ.get("RCS_API_CPUS", "1"),
        "RCS_TORCH_THREADS": os.environ.get("RCS_TORCH_THREADS", "1"),
        **extra,
    }
    env_file = state / "env"
    env_file.write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    env_file.write_text(env_file.read_text() + f"RCS_SMOKE_PROJECT={project}\n")
    stack = Stack(compose, project, env, files)
    log(f"   project {project}, API on {stack.base} (127.0.0.1 only)")
    try:
        run_stack(stack, figures, state)
    except BaseException:
        print(f"{stamp()} !! failed; the stack's last log lines:", flush=True)
        print(stack("logs", "--no-color", "--tail", "60", quiet=True, check=False), flush=True)
        raise
    finally:
        began = time.monotonic()
        print(f"{stamp()} == down -v", flush=True)
        stack("down", "-v", "--remove-orphans", quiet=True, check=False)
        left = run(
            ["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
            quiet=True,
        ).split()
        volumes = run(
            [
                "docker",
                "volume",
                "ls",
                "-q",
                "--filter",
                f"label=com.docker.compose.project={project}",
            ],
            quiet=True,
        ).split()
        print(
            f"{stamp()}    {'ok' if not left and not volumes else 'NOT CLEAN'}: down -v "
            f"({time.monotonic() - began:.1f} s; containers left {len(left)}, volumes left "
            f"{len(volumes)})",
            flush=True,
        )
        if left or volumes:
            raise SmokeError(f"down -v left {left} {volumes}")
    return figures


def _run_stack(stack: Stack, figures: dict[str, float], state: Path) -> None:
    began = time.monotonic()
    # The API image first: its dependency stage is the worker's too, built once (the classic
    # builder builds two images' identical stages twice when they run side by side).
    step("build the API image (docker compose build api)", lambda: stack("build", "api"))
    step("build the rest (docker compose build)", lambda: stack("build"))
    figures["build_s"] = time.monotonic() - began
    for image in ("robust-clip-api:smoke", "robust-clip-worker:smoke"):
        log(f"   {image}: {image_size(image)}")
    log("   docker images (the two share every layer but their last few; df counts them once):")
    for line in run(["docker", "images"], quiet=True).strip().splitlines():
        print(f"           {line}", flush=True)
    shared = run(["docker", "system", "df", "--format", "{{.Type}}: {{.Size}}"], quiet=True)
    log(f"   docker system df: {'; '.join(shared.split(chr(10))[:2])}")

    began = time.monotonic()
    step("up -d", lambda: stack("up", "-d", quiet=True))

    def healthy() -> bool | None:
        states = {s: stack.health(s) for s in ("postgres", "redis", "api", "worker-cpu")}
        if any(s.startswith(("exited", "dead")) for s in states.values()):
            raise SmokeError(f"a service stopped: {states}")
        return True if all(s == "running healthy" for s in states.values()) else None

    step(
        "every service healthy (postgres, redis, api, worker-cpu)",
        lambda: wait_for("healthy services", healthy, 600, every=2.0),
    )
    figures["healthy_s"] = time.monotonic() - began
    migrate = run(
        [
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={stack.project}",
            "--filter",
            "label=com.docker.compose.service=migrate",
            "--format",
            "{{.Status}}",
        ],
        quiet=True,
    ).strip()
    log(f"   migrate: {migrate}")

    boot = Api(stack.base, stack.env["RCS_BOOTSTRAP_API_KEY"])
    created = step(
        "create an API key (POST /keys with the bootstrap key; scopes predict, train)",
        lambda: boot.post("/keys", {"name": "smoke", "scopes": ["predict", "train"]}),
    )
    api = Api(stack.base, created["key"])
    log(f"   key {created['id']} {created['scopes']}; GET /me: {api.get('/me')['scopes']}")

    def write_dataset() -> str:
        with tempfile.TemporaryDirectory(prefix="rcs-smoke-data-") as tmp:
            image = "robust-clip-api:smoke"
            # The project's own synthetic shapes, written by the API image.
            run_offline(
                [
                    "--user",
                    f"{os.getuid()}:{os.getgid()}",
                    "-v",
                    f"{tmp}:/out",
                    image,
                    "python",
                    "-c",
                    "from models.data.synthetic import write_shapes_dataset; "
                    "write_shapes_dataset('/out/shapes', per_class=32, size=32)",
                ]
            )
            # Into the datasets volume (mounted read-only by the services).
            run_offline(
                [
                    "--user",
                    "0",
                    "-v",
                    f"{tmp}:/src:ro",
                    "-v",
                    f"{stack.project}_datasets:/datasets",
                    image,
                    "sh",
                    "-c",
                    "rm -rf /datasets/shapes && cp -r /src/shapes /datasets/ "
                    "&& chmod -R a+rX /datasets/shapes",
                ]
            )
            keep = state / "test-images"  # removed with the state folder
            keep.mkdir()
            for label in CLASSES:
                for path in sorted((Path(tmp) / "shapes" / "test" / label).iterdir())[:2]:
                    (keep / f"{label}-{path.name}").write_bytes(path.read_bytes())
            return str(keep)

    test_images = Path(step("write the shapes dataset into the datasets volume", write_dataset))
    dataset = step(
        "register the dataset (POST /datasets, path /datasets/shapes)",
        lambda: api.post("/datasets", {"name": "shapes", "path": "/datasets/shapes"}),
    )
    counts = {k: sum(v.values()) for k, v in dataset["splits"].items()}
    log(f"   dataset {dataset['id']}: classes {dataset['classes']}, splits {counts}")
    texts = {
        "circle": ["a round shape", "a circle"],
        "square": ["four equal sides", "a square"],
        "triangle": ["three sides", "a triangle"],
        "cross": ["two crossing bars", "a plus sign"],
    }
    described = step(
        "store descriptions (POST /descriptions)",
        lambda: api.post("/descriptions", {"name": "shapes", "descriptions": texts}),
    )
    log(f"   descriptions {described['id']} v{described['version']}")

    began = time.monotonic()
    job_id = step(
        "DRM job on the worker container (POST /finetune)",
        lambda: finetune(api, dataset["id"], described["id"], "shapes-drm", 60),
    )
    job = step("the job runs to completion", lambda: follow(api, job_id, 900))
    figures["job_s"] = time.monotonic() - began
    log(f"   registered as {job['fine_tuned_model']}")
    one_ready_version(api, "shapes-drm", job_id)

    def predict() -> float:
        files = sorted(test_images.iterdir())
        body = {
            "model": "shapes-drm",
            "images": [base64.b64encode(p.read_bytes()).decode() for p in files],
            "top_k": 2,
        }
        out = api.post("/predict", body)
        right = 0
        for path, prediction in zip(files, out["data"], strict=True):
            top = prediction["labels"][0]
            right += path.name.startswith(top["label"] + "-")
            log(f"   {path.name}: {top['label']} ({top['probability']:.2f})")
        log(f"   {right}/{len(files)} right (a random-init model trained for seconds)")
        return right / len(files)

    step("classify test images (POST /predict, shapes-drm)", predict)

    # The worker container killed mid-job, after a checkpoint.
    kill_id = step(
        "a second DRM job (checkpoints every 10 steps)",
        lambda: finetune(api, dataset["id"], described["id"], "shapes-kill", 400),
    )

    def past_checkpoint() -> int | None:
        job = api.get(f"/jobs/{kill_id}")
        if job["status"] != "running":
            if job["status"] in TERMINAL:
                raise SmokeError(f"job {kill_id} ended before the kill: {job['status']}")
            return None
        saved = api.get(f"/jobs/{kill_id}/checkpoints")["data"]
        best = max((c["step_number"] for c in saved), default=0)
        return best if best >= 20 else None

    worker = stack.container("worker-cpu")
    at = step(
        "train past a checkpoint (step 20 or later)",
        lambda: wait_for("a checkpoint", past_checkpoint, 600, 0.25),
    )
    killed_at = time.monotonic()
    step(
        f"docker kill the worker container (checkpoint {at} listed)",
        lambda: run(["docker", "kill", worker], quiet=True),
    )
    dead = run(
        ["docker", "inspect", "-f", "{{.State.Status}} (exit code {{.State.ExitCode}})", worker],
        quiet=True,
    ).strip()
    job = api.get(f"/jobs/{kill_id}")
    listed = max(c["step_number"] for c in api.get(f"/jobs/{kill_id}/checkpoints")["data"])
    # The checkpoint a resumed run must start after: the one on disk once the worker is dead
    # (what models.train.latest_checkpoint returns; the list may be one ahead of the files).
    checkpoint = int(
        run_offline(
            [
                "-v",
                f"{stack.project}_work:/data/work:ro",
                "robust-clip-worker:smoke",
                "python",
                "-c",
                "from pathlib import Path; from models.train import latest_checkpoint; "
                f"p = latest_checkpoint(Path('/data/work/jobs/{kill_id}/checkpoints')); "
                "print(int(p.name.removeprefix('step-')) if p else 0)",
            ],
            quiet=True,
        ).split()[-1]
    )
    log(
        f"   worker container {worker[:12]}: {dead}; job {job['status']}, last reported step "
        f"{job['progress']['step']}; checkpoint listed {listed}, on disk {checkpoint}"
    )
    if job["status"] != "running" or not 0 < checkpoint < 400:
        raise SmokeError(f"the kill did not land mid-training: {job['status']}, {checkpoint}")
    step("docker compose up -d (the worker comes back)", lambda: stack("up", "-d", quiet=True))

    def resumed() -> bool | None:
        return True if len(attempts(api, kill_id)) >= 2 else None

    step("the job is taken over (lease 20 s)", lambda: wait_for("attempt 2", resumed, 300))
    figures["resume_s"] = time.monotonic() - killed_at
    job = step("the job runs to completion", lambda: follow(api, kill_id, 900))
    figures["recovered_s"] = time.monotonic() - killed_at
    runs = attempts(api, kill_id)
    for message, steps in runs:
        first = f"{steps[0]}..{steps[-1]}" if steps else "none"
        log(f"   {message}: steps {first} ({len(steps)} metrics events)")
    all_steps = [s for _, steps in runs for s in steps]
    if len(runs) != 2 or not runs[1][1]:
        raise SmokeError(f"expected 2 attempts, the second training: {runs}")
    if all_steps.count(1) != 1:
        raise SmokeError("step 1 trained twice: the job restarted instead of resuming")
    if runs[1][1][0] != checkpoint + 1:
        raise SmokeError(
            f"attempt 2 began at step {runs[1][1][0]}, not after checkpoint {checkpoint}"
        )
    log(
        f"   resumed from checkpoint {checkpoint}: attempt 2 began at step {runs[1][1][0]}; "
        f"step 1 trained once"
    )
    one_ready_version(api, "shapes-kill", kill_id)
    completed = [e for e in events(api, kill_id) if "successfully completed" in e["message"]]
    if len(completed) != 1:
        raise SmokeError(f"{len(completed)} completion events")
    log("   one completion event")


def main(
    argv: list[str] | None = None,
    variant: tuple[str, list[str], dict[str, str], RunStack] | None = None,
) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, required=True, help="scratch folder (env file)")
    args = parser.parse_args(argv)
    compose = shlex.split(os.environ.get("COMPOSE", "docker compose"))
    began = time.monotonic()
    try:
        figures = smoke(compose, args.state, variant)
    except SmokeError as error:
        print(f"{stamp()} FAILED: {error}", file=sys.stderr, flush=True)
        return 1
    total = time.monotonic() - began
    print(
        f"{stamp()} compose smoke passed in {total:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in figures.items()),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
