"""Serving against a peer: this service and BentoML on the same artifact, side by side, one run.

For each model it
1. writes a zero-shot artifact (10 classes; the offline backbone's real weights, random ones
   for open_clip architectures) and registers it as version 1 in a temporary registry;
2. measures the model's own limit: back-to-back forward passes of ``--max-batch`` preprocessed
   images in a process of its own (``bench/serve.py --limit``), or in ``--workers`` such
   processes at once, each with ``--torch-threads``, their images/s summed (``own_limit``);
3. starts each server on the same artifact with the same transform and the same batch size:
   - ``ours``: ``python -m service serve`` (uvicorn, dynamic batching), with API keys on and a
     predict key in every request, as deployed;
   - ``bentoml``: ``bentoml serve bench.peer_bento:PeerClassifier``, adaptive batching
     (``bench/peer_bento.py``);
   both with ``--workers`` processes (1 unless told) and ``--torch-threads`` each;
   checks that both give the same labels and probabilities for every sample image, then drives
   it from each load generator in turn at each client level, with the image as multipart and as
   base64 JSON (one JPEG per request, 256 px unless ``--image-size``, untimed warm-up):
   - ``ours``: a separate process, raw HTTP/1.1 on asyncio, keep-alive, closed loop, a fixed
     number of timed requests;
   - ``wrk`` (the Debian package): the same prebuilt requests from a Lua script, one keep-alive
     connection per client, for ``--wrk-seconds``;
4. reports images/s, p50/p99 latency, errors, the server's CPU per image (its whole process
   tree) and the goals of issue 15.

Run from the repository root (``make bench-peer``; about 10 minutes on 2 CPU cores):

    .venv/bin/python bench/peer.py
    .venv/bin/python bench/peer.py --models ViT-B-32 --clients 1,32 --requests 256
    .venv/bin/python bench/peer.py --report runs/peer.json      # the tables of a saved run

Both servers share the machine with the load generator; both generators are cheap (requests
prebuilt; ours has no HTTP library, wrk is C) so that what is measured is the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve import (  # noqa: E402
    READY_TIMEOUT_S,
    REGISTERED,
    _percentile,
    _self,
    batch_counts,
    register,
    run_models,
    sample_images,
    server_env,
    write_artifact,
)

SERVERS = ("ours", "bentoml")
FORMATS = ("multipart", "json")
TOP_K = 3
BENTOML_VERSION = "1.4.40"


# --- the requests ---------------------------------------------------------------------------------


def request_bytes(server: str, fmt: str, host: str, image: bytes, key: str | None) -> bytes:
    """One complete HTTP/1.1 request classifying ``image``, as ``server`` expects it."""
    boundary = uuid.uuid4().hex
    if server == "ours":
        path = "/predict"
        if fmt == "json":
            payload = {"model": REGISTERED, "images": [base64.b64encode(image).decode()]}
            body = json.dumps({**payload, "top_k": TOP_K}).encode()
        else:
            body = _multipart(boundary, {"model": REGISTERED, "top_k": str(TOP_K)}, "files", image)
    else:
        path = "/classify_b64" if fmt == "json" else "/classify"
        if fmt == "json":
            body = json.dumps({"images": [base64.b64encode(image).decode()]}).encode()
        else:
            body = _multipart(boundary, {}, "images", image)
    content_type = (
        "application/json" if fmt == "json" else f"multipart/form-data; boundary={boundary}"
    )
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Accept: application/json",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _multipart(boundary: str, fields: dict[str, str], file_field: str, image: bytes) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
        f'filename="image.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


# --- the load generator ---------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._chunked()
        else:  # the body runs to the end of the connection
            body = await self.reader.read()
            headers["connection"] = "close"
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        chunks = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(chunks)
            chunks.append(chunk[:-2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(
    url: str,
    server: str,
    fmt: str,
    clients: int,
    requests: int,
    key: str | None,
    image_size: int = 256,
) -> dict[str, Any]:
    """``clients`` closed loops, one image per request, until ``requests`` have been timed."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prebuilt = [
        request_bytes(server, fmt, parts.netloc, image, key)
        for image in sample_images(size=image_size)
    ]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0

    async def loop(timed: bool, quota: int) -> None:
        nonlocal sent
        connection = Connection(host, port)
        connections.append(connection)
        while sent < quota:
            request = prebuilt[sent % len(prebuilt)]
            sent += 1
            t0 = time.perf_counter()
            try:
                status, _ = await connection.send(request)
                reason = None if status == 200 else str(status)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                connection.close()
                reason = type(exc).__name__
            if timed:
                latencies.append(time.perf_counter() - t0)
                if reason is not None:
                    errors[reason] = errors.get(reason, 0) + 1

    connections: list[Connection] = []
    # Untimed warm-up: every connection opened, the first passes paid for. Each timed loop then
    # opens its own connection too; the warm-up's stay open, idle, as a real client pool's do.
    await asyncio.gather(*(loop(False, 2 * clients) for _ in range(clients)))
    sent = 0
    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop(True, requests) for _ in range(clients)))
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    for connection in connections:
        connection.close()
    ok = len(latencies) - sum(errors.values())
    return {
        "clients": clients,
        "requests": len(latencies),
        "warm_up_requests": 2 * clients,
        "images_per_s": ok / wall,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": wall,
        "client_cpu_ms_per_request": client_cpu * 1000 / max(1, len(latencies)),
    }


# --- the second load generator: wrk -------------------------------------------------------------

GENERATORS = ("ours", "wrk")
WRK_WARM_UP_S = 2.0
# wrk's Lua: the prebuilt requests (each body in a file, with its own Content-Type, since a
# multipart boundary is per body) sent round-robin on every connection; at the end, one JSON
# line with the counts and the latency percentiles (microseconds).
WRK_SCRIPT = """
local bodies = {%(bodies)s}
local requests = {}
local i = 0
function init(args)
  for _, item in ipairs(bodies) do
    local f = assert(io.open(item[1], "rb"))
    local body = f:read("*a")
    f:close()
    local headers = {%(headers)s}
    headers["Content-Type"] = item[2]
    requests[#requests + 1] = wrk.format("POST", "%(path)s", headers, body)
  end
end
function request()
  i = i %% #requests + 1
  return requests[i]
end
function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, '
    .. '"connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def wrk_script(
    server: str, fmt: str, host: str, images: list[bytes], key: str | None, folder: Path
) -> Path:
    """The Lua script that makes wrk send the requests ``request_bytes`` builds."""
    bodies = []
    headers: dict[str, str] = {}
    path = "/"
    for i, image in enumerate(images):
        head, _, body = request_bytes(server, fmt, host, image, key).partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        path = lines[0].split(" ")[1]
        fields = dict(line.split(": ", 1) for line in lines[1:])
        content_type = fields.pop("Content-Type")
        headers = {k: v for k, v in fields.items() if k not in ("Host", "Content-Length")}
        body_path = folder / f"body-{i}"
        body_path.write_bytes(body)
        bodies.append(f"{{{json.dumps(str(body_path))}, {json.dumps(content_type)}}}")
    script = folder / "requests.lua"
    script.write_text(
        WRK_SCRIPT
        % {
            "bodies": ", ".join(bodies),
            "path": path,
            "headers": ", ".join(
                f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()
            ),
        }
    )
    return script


def drive_wrk(
    url: str,
    server: str,
    fmt: str,
    clients: int,
    seconds: float,
    key: str | None,
    image_size: int = 256,
) -> dict[str, Any]:
    """``clients`` keep-alive connections from wrk (a C load generator on its own threads,
    closed loop per connection) for ``seconds``, after an untimed warm-up of the same kind."""
    import resource
    import subprocess

    with tempfile.TemporaryDirectory(prefix="rcs-bench-wrk-") as tmp:
        images = sample_images(size=image_size)
        script = wrk_script(server, fmt, urlsplit(url).netloc, images, key, Path(tmp))
        threads = min(clients, 2)

        def run(duration: float) -> dict[str, Any]:
            cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{duration:.0f}s"]
            cmd += ["--timeout", "60s", "-s", str(script), url]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
            return result

        warm = run(WRK_WARM_UP_S)
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = run(seconds)
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
        cpu_after.ru_stime - cpu_before.ru_stime
    )
    kinds = {k: out[k] for k in ("connect", "read", "write", "status", "timeout") if out[k]}
    errors = sum(kinds.values())
    wall = out["duration_us"] / 1e6
    return {
        "clients": clients,
        "requests": out["requests"],
        "warm_up_requests": warm["requests"],
        "images_per_s": (out["requests"] - errors) / wall,
        "p50_ms": out["p50_us"] / 1000,
        "p99_ms": out["p99_us"] / 1000,
        "errors": errors,
        "error_kinds": kinds,
        "wall_s": wall,
        "client_cpu_ms_per_request": client_cpu * 1000 / max(1, out["requests"]),
    }


# --- the servers ----------------------------------------------------------------------------------


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of ``pid`` and every live descendant."""
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, CPU seconds), one read each
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        stats[int(stat.parent.name)] = (int(fields[1]), cpu)
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, (pp, _) in stats.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return sum(stats[p][1] for p in tree if p in stats)


def common_env(device: str, torch_threads: int) -> dict[str, str]:
    # Both servers alike: idle OpenMP threads sleep (python -m service serve sets this itself),
    # torch uses every core unless told otherwise, no telemetry.
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if torch_threads:
        env["OMP_NUM_THREADS"] = str(torch_threads)
    env.update(
        {
            "OMP_WAIT_POLICY": "PASSIVE",
            "PYTHONPATH": str(ROOT),
            "BENTOML_DO_NOT_TRACK": "True",
            "PEER_DEVICE": device,
        }
    )
    return env


def our_env(tmp: Path, args: argparse.Namespace) -> dict[str, str]:
    # bench/serve.py's settings for the server, with API keys on, over the environment both
    # servers share here.
    settings = server_env(tmp, args.device, args.max_batch, batching=True, engine=args.engine)
    return {
        **common_env(args.device, args.torch_threads),
        **{name: value for name, value in settings.items() if name.startswith("RCS_")},
        "RCS_AUTH_DISABLED": "false",
        "RCS_PREDICT_JPEG_DRAFT": "true" if args.jpeg_draft else "false",
    }


def predict_key(env: dict[str, str]) -> str:
    from service.auth.service import create_key
    from service.db.engine import make_engine, make_sessionmaker

    with make_sessionmaker(make_engine(env["RCS_DATABASE_URL"]))() as session:
        _, key = create_key(session, "bench-peer", ["predict"])
        session.commit()
    return key


@contextmanager
def running(server: str, folder: Path, tmp: Path, args: argparse.Namespace) -> Iterator[Any]:
    """The server on a free port, ready; yields (url, pid, key or None)."""
    from tools.processes import Process, free_port, wait_ready

    port = free_port()
    key = None
    if server == "ours":
        env = our_env(tmp / "ours", args)
        register(env, folder)
        key = predict_key(env)
        cmd = [sys.executable, "-m", "service", "serve", "--port", str(port)]
        cmd += ["--workers", str(args.workers)]
    else:
        env = {
            **common_env(args.device, args.torch_threads),
            "BENTOML_HOME": str(tmp / "bentoml-home"),
            "PEER_ARTIFACT": str(folder),
            "PEER_MAX_BATCH": str(args.max_batch),
            "PEER_TOP_K": str(TOP_K),
            "PEER_WORKERS": str(args.workers),
            "PEER_JPEG_DRAFT": "true" if args.jpeg_draft else "false",
            "PEER_ENGINE": args.peer_engine,
            "PEER_ONNX_DIR": str(tmp / "onnx"),
        }
        bentoml = Path(sys.executable).with_name("bentoml")
        target = "bench.peer_bento:PeerClassifier"
        cmd = [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    process = Process(server, cmd, tmp / f"{server}.log", env).start()
    assert process.popen is not None
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, READY_TIMEOUT_S)
        yield url, process.popen.pid, key
    finally:
        process.stop(timeout=30)


def answers(
    url: str, server: str, fmt: str, key: str | None, image_size: int
) -> list[tuple[str, float]]:
    """(top-1 label, probability) of every sample image, one request each."""
    import httpx

    out = []
    host = urlsplit(url).netloc
    for image in sample_images(size=image_size):
        raw = request_bytes(server, fmt, host, image, key)
        head, _, body = raw.partition(b"\r\n\r\n")
        headers = dict(
            line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line
        )
        headers.pop("Content-Length")
        path = head.split(b" ")[1].decode()
        response = httpx.post(url + path, content=body, headers=headers, timeout=60)
        response.raise_for_status()
        data = response.json()
        first = data["data"][0]["labels"][0] if server == "ours" else data[0][0]
        out.append((first["label"], float(first["probability"])))
    return out


def run_levels(
    server: str, url: str, pid: int, key: str | None, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    levels = [
        (generator, fmt, int(clients))
        for generator in args.generators.split(",")
        for fmt in args.formats.split(",")
        for clients in args.clients.split(",")
    ]
    for generator, fmt, clients in levels:
        # /metrics answers for the one process that takes the request: images per pass is
        # known with a single server process only.
        ours = server == "ours" and args.workers == 1
        images_before, passes_before = batch_counts(url) if ours else (0.0, 0.0)
        cpu_before = tree_cpu_s(pid)
        n = max(args.requests, 4 * clients)
        drive_args = ["--drive", url, "--server", server, "--format", fmt]
        drive_args += ["--image-size", str(args.image_size), "--generator", generator]
        drive_args += ["--clients", str(clients), "--requests", str(n)]
        drive_args += ["--wrk-seconds", str(args.wrk_seconds)]
        out = _self(drive_args + (["--key", key] if key else []), __file__)
        cpu = tree_cpu_s(pid) - cpu_before
        images_after, passes_after = batch_counts(url) if ours else (0.0, 0.0)
        passes = passes_after - passes_before
        row = {
            "server": server,
            "generator": generator,
            "format": fmt,
            **out,
            "mean_batch": (images_after - images_before) / passes if passes else None,
            # Warm-up requests included: CPU per image served.
            "server_cpu_ms_per_image": cpu * 1000 / (out["requests"] + out["warm_up_requests"]),
        }
        print(
            f"  {server:8s} {generator:4s} {fmt:9s} {clients:3d} clients: "
            f"{row['images_per_s']:6.1f} "
            f"images/s, p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
            f"{row['errors']} errors",
            flush=True,
        )
        rows.append(row)
    return rows


def own_limit(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The model's own limit as the servers run it: ``--workers`` processes at once, each with
    ``--torch-threads`` threads (as both servers' processes get them), each looping over
    back-to-back forward passes (``bench/serve.py --limit``); images/s summed over them.

    With one process and every thread this is ``bench/serve.py``'s own limit; with several, what
    one process with every thread manages is a different and lower ceiling (one thread per
    process loses nothing to intra-op synchronisation), so it is no yardstick for them.
    """
    import subprocess

    cmd = [sys.executable, str(ROOT / "bench" / "serve.py"), "--limit", str(folder)]
    cmd += ["--device", args.device, "--max-batch", str(args.max_batch)]
    cmd += ["--limit-seconds", str(args.limit_seconds)]
    env = common_env(args.device, args.torch_threads)
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(args.workers)
    ]
    each = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the own-limit loop failed:\n{err[-3000:]}")
        each.append(json.loads(out.strip().splitlines()[-1]))
    if len(each) == 1:
        return each[0]
    rate = sum(e["images_per_s"] for e in each)
    return {
        **each[0],
        "images_per_s": rate,
        "cpu_ms_per_image": sum(e["cpu_ms_per_image"] * e["images_per_s"] for e in each) / rate,
        "preprocess_ms_per_image": sum(e["preprocess_ms_per_image"] for e in each) / len(each),
        "processes": [e["images_per_s"] for e in each],
    }


def bench_model(arch: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    print(f"{arch}:", flush=True)
    folder = write_artifact(arch, tmp / "artifact")
    limit = own_limit(folder, args)
    print(f"  own limit: {limit['images_per_s']:.1f} images/s", flush=True)
    rows: list[dict[str, Any]] = []
    agreement: dict[str, list[tuple[str, float]]] = {}
    order = list(args.servers.split(","))
    engines: dict[str, list[str]] = {}
    for round_ in range(args.rounds):
        for server in order if round_ % 2 == 0 else order[::-1]:
            with running(server, folder, tmp / f"{server}-{round_}", args) as (url, pid, key):
                for fmt in args.formats.split(","):
                    agreement[f"{server} {fmt}"] = answers(url, server, fmt, key, args.image_size)
                for row in run_levels(server, url, pid, key, args):
                    rows.append({**row, "round": round_})
            if server == "ours":
                log = (tmp / f"{server}-{round_}" / f"{server}.log").read_text(errors="replace")
                engines[f"ours round {round_}"] = engine_choices(log)
                print(f"  ours served with: {', '.join(engines[f'ours round {round_}'])}")
    return {
        "arch": arch,
        "limit": limit,
        "rows": rows,
        "agreement": agreement,
        "engines": engines,
    }


def engine_choices(log: str) -> list[str]:
    """What each of our server's processes ran its passes in, from the lines it logs when a
    model loads (``service.predict.cache``): engine and threads, with the timings it chose by."""
    return [
        match.group(1).strip()
        for match in re.finditer(r": passes (?:run in|use) ([^\n]*?)(?: \(|$)", log, re.M)
    ]


# --- where the time goes -------------------------------------------------------------------------

# Request-path stages, each recognised by the frames of a sampled stack. A sample counts for the
# innermost frame that names a stage, so SQL under the key check is "auth" and JSON encoding
# under the response is "response".
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("auth (API key)", ("authorize (", "authenticate (", "check_key_first (", "cached_principal")),
    ("model resolution", ("resolve (service/predict", "model_for (", "resolved_model")),
    ("decode", ("open_image (", "_rgb (", "_guarded (", "draft (", "decode (service")),
    ("resize, crop, to pixels", ("pixels (service", "Resize", "CenterCrop", "resize (")),
    ("forward pass", ("forward (service/predict", "to_input (", "forward_async (")),
    ("multipart parsing", ("read_form (", "multipart", "_from_multipart (")),
    ("JSON body, base64", ("_from_json (", "from_base64 (", "model_validate_json")),
    ("response", ("respond (", "serialize_response (", "render (", "jsonable_encoder (")),
    ("batching, queueing", ("batcher.py",)),
    ("HTTP parsing and writing", ("httptools_impl.py", "h11_impl.py", "uvicorn/protocols")),
    ("middleware (size limit, metrics)", ("service/limits.py", "service/observability.py")),
    ("routing, dependencies", ("starlette/routing.py", "fastapi/routing.py", "dependencies/")),
    ("errors, logging", ("service/errors.py", "service/http_errors.py", "logging/")),
    ("threads: hand-offs", ("concurrent/futures", "threading.py", "anyio/", "to_thread")),
    ("event loop", ("asyncio/", "uvloop")),
]


PROFILE_HZ = 250  # py-spy samples per second and thread


def stage_of(stack: str) -> str:
    """The stage of one sampled stack (frames outermost first, separated by ';')."""
    for frame in reversed(stack.split(";")):
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return "other"


def breakdown(raw: Path) -> dict[str, int]:
    """Samples per stage of a py-spy ``--format raw`` profile."""
    counts: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stage = stage_of(stack)
            counts[stage] = counts.get(stage, 0) + int(count)
    return counts


def profile_level(
    url: str,
    pid: int,
    key: str | None,
    fmt: str,
    clients: int,
    requests: int,
    out: Path,
    subprocesses: bool = False,
) -> dict[str, Any]:
    """One load level with py-spy sampling the server: samples per stage, CPU per image.

    ``subprocesses``: the server runs several processes under uvicorn's supervisor (``pid``),
    and py-spy samples each of them."""
    import subprocess

    pyspy = Path(sys.executable).with_name("py-spy")
    raw = out / f"ours-{fmt}-{clients}.txt"
    cmd = [str(pyspy), "record", "--pid", str(pid), "--rate", str(PROFILE_HZ), "--format", "raw"]
    cmd += ["--output", str(raw), "--nonblocking"] + (["--subprocesses"] if subprocesses else [])
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached before the load starts
    cpu_before = tree_cpu_s(pid)
    drive_args = ["--drive", url, "--server", "ours", "--format", fmt]
    drive_args += ["--clients", str(clients), "--requests", str(requests)]
    result = _self(drive_args + (["--key", key] if key else []), __file__)
    cpu = tree_cpu_s(pid) - cpu_before
    spy.send_signal(2)  # SIGINT: py-spy writes what it has
    spy.wait(60)
    served = result["requests"] + result["warm_up_requests"]
    return {
        **result,
        "format": fmt,
        "server_cpu_ms_per_image": cpu * 1000 / served,
        "samples": breakdown(raw),
        "profile": str(raw),
    }


def profile_report(rows: list[dict[str, Any]]) -> str:
    """Per image, the server's CPU time split by stage in proportion to the samples.

    py-spy samples Python threads that are running or waiting to run (for the GIL or a core);
    torch's second OpenMP thread has no Python stack and is not sampled, so the forward pass's
    real share is larger than its share of samples, and every other stage's smaller.
    """
    lines = []
    for row in rows:
        total = sum(row["samples"].values()) or 1
        cpu = row["server_cpu_ms_per_image"]
        lines += [
            f"{row['format']}, {row['clients']} clients: {row['images_per_s']:.1f} images/s, "
            f"server CPU {cpu:.2f} ms per image ({total} samples, {row['profile']})",
            "",
            "| stage | share of samples | CPU ms per image |",
            "|---|---|---|",
        ]
        for stage, count in sorted(row["samples"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {stage} | {count / total:.1%} | {cpu * count / total:.2f} |")
        lines.append("")
    return "\n".join(lines)


def run_profile(args: argparse.Namespace) -> None:
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rcs-bench-peer-") as tmp:
        arch = args.models.split(",")[0]
        folder = write_artifact(arch, Path(tmp) / "artifact")
        with running("ours", folder, Path(tmp) / "ours", args) as (url, pid, key):
            for fmt in args.formats.split(","):
                for clients in [int(c) for c in args.clients.split(",")]:
                    n = max(args.requests, 4 * clients)
                    rows.append(
                        profile_level(url, pid, key, fmt, clients, n, out, args.workers > 1)
                    )
    text = profile_report(rows)
    (out / "breakdown.md").write_text(text)
    print(text)


# --- the report -----------------------------------------------------------------------------------


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    limit = result["limit"]["images_per_s"]
    lines = [
        f"### {result['arch']} (device {args.device}, max batch {args.max_batch}, "
        f"{args.workers} server process(es), {args.image_size} px JPEGs, "
        f"our engine {getattr(args, 'engine', 'torch')}, BentoML {BENTOML_VERSION} on "
        f"{getattr(args, 'peer_engine', 'torch')})",
        "",
        f"Own limit in torch: {limit:.1f} images/s ({result['limit']['cpu_ms_per_image']:.1f} "
        f"CPU ms per image, back-to-back passes of {args.max_batch} images"
        f"{_limit_processes(result)}); preprocessing alone "
        f"{result['limit']['preprocess_ms_per_image']:.2f} ms per image.",
        "",
        *[
            f"Our server ({run}), as its processes logged when the model loaded: "
            + "; ".join(choices or ["nothing logged"])
            + "."
            for run, choices in result.get("engines", {}).items()
        ],
        "",
        *agreement_lines(result["agreement"]),
        "",
        "| generator | format | clients | ours images/s | BentoML images/s | ours / BentoML "
        "| ours vs limit | ours p50 / p99 ms | BentoML p50 / p99 ms | errors (ours, BentoML) "
        "| server CPU ms/image (ours, BentoML) | ours images/pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for generator, fmt, clients, ours, peer in paired(result["rows"]):
        lines.append(
            f"| {generator} | {fmt} | {clients} | {ours['images_per_s']:.1f} "
            f"| {peer['images_per_s']:.1f} "
            f"| {ours['images_per_s'] / peer['images_per_s']:.2f} "
            f"| {ours['images_per_s'] / limit:.2f} "
            f"| {ours['p50_ms']:.0f} / {ours['p99_ms']:.0f} "
            f"| {peer['p50_ms']:.0f} / {peer['p99_ms']:.0f} "
            f"| {ours['errors']}, {peer['errors']} "
            f"| {ours['server_cpu_ms_per_image']:.1f}, {peer['server_cpu_ms_per_image']:.1f} "
            f"| {_fmt_batch(ours['mean_batch'])} |"
        )
    lines += ["", *goals(result)]
    return "\n".join(lines)


def _limit_processes(result: dict[str, Any]) -> str:
    """How the own limit was run, when by several processes at once (``own_limit``)."""
    each = result["limit"].get("processes")
    if not each:
        return ""
    rates = " + ".join(f"{rate:.1f}" for rate in each)
    threads = result["limit"]["torch_threads"]
    return f", {len(each)} processes of {threads} torch thread(s) at once: {rates}"


def _fmt_batch(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def paired(
    rows: list[dict[str, Any]],
) -> list[tuple[str, str, int, dict[str, Any], dict[str, Any]]]:
    """(load generator, format, clients, ours, BentoML) per level, each the mean over rounds
    (a run saved before wrk was added has only our generator)."""
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        level = (row.get("generator", "ours"), row["format"], row["clients"], row["server"])
        groups.setdefault(level, []).append(row)
    out = []
    for (generator, fmt, clients, server), group in groups.items():
        peer = groups.get((generator, fmt, clients, "bentoml"))
        if server != "ours" or not peer:
            continue
        out.append((generator, fmt, clients, _mean(group), _mean(peer)))
    return out


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if len(rows) == 1:
        return rows[0]
    out = dict(rows[0])
    for key in ("images_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_image"):
        out[key] = sum(r[key] for r in rows) / len(rows)
    out["errors"] = sum(r["errors"] for r in rows)
    batches = [r["mean_batch"] for r in rows if r["mean_batch"] is not None]
    out["mean_batch"] = sum(batches) / len(batches) if batches else None
    return out


def agreement_lines(agreement: dict[str, list[tuple[str, float]]]) -> list[str]:
    if not agreement:
        return []
    names = list(agreement)
    base = agreement[names[0]]
    same = all(
        [label for label, _ in answers_] == [label for label, _ in base]
        for answers_ in agreement.values()
    )
    diff = max(
        abs(p - q)
        for answers_ in agreement.values()
        for (_, p), (_, q) in zip(answers_, base, strict=True)
    )
    verdict = "the same top-1 label" if same else "DIFFERENT top-1 labels"
    return [
        f"Same artifact, same answers: {', '.join(names)} give {verdict} for all {len(base)} "
        f"sample images; top-1 probabilities differ by at most {diff:.1e}."
    ]


def goals(result: dict[str, Any]) -> list[str]:
    """Issue 28's goals, per load generator and format (and the own limit's of issue 15)."""
    limit = result["limit"]["images_per_s"]
    model_bound = result["arch"] != "offline-lite0-minilm"
    checks = []
    by_level = {(g, fmt, c): (o, p) for g, fmt, c, o, p in paired(result["rows"])}
    for generator, fmt in sorted({(g, fmt) for g, fmt, _ in by_level}):
        name = f"{generator}, {fmt}"
        if (generator, fmt, 1) in by_level:
            ours, peer = by_level[(generator, fmt, 1)]
            checks.append(
                (
                    f"{name}, 1 client: p50 {ours['p50_ms']:.1f} ms against BentoML's "
                    f"{peer['p50_ms']:.1f} (goal: at most)",
                    ours["p50_ms"] <= peer["p50_ms"],
                )
            )
        for clients in sorted({c for g, f, c in by_level if (g, f) == (generator, fmt)}):
            ours, peer = by_level[(generator, fmt, clients)]
            spread = ours["p99_ms"] / ours["p50_ms"]
            noun = "client" if clients == 1 else "clients"
            checks.append(
                (f"{name}, {clients} {noun}: p99/p50 {spread:.2f} (goal < 4)", spread < 4)
            )
            if clients not in (32, 64):
                continue
            ratio = ours["images_per_s"] / peer["images_per_s"]
            want = 1.0 if model_bound else 1.3
            checks.append(
                (f"{name}, {clients} clients: {ratio:.2f}x BentoML (goal >= {want})", ratio >= want)
            )
        if (generator, fmt, 32) in by_level and generator == "ours":
            share = by_level[(generator, fmt, 32)][0]["images_per_s"] / limit
            want = 0.9 if model_bound else 0.5
            checks.append(
                (
                    f"{name}, 32 clients: {share:.2f} of the own limit (goal >= {want})",
                    share >= want,
                )
            )
        if (generator, fmt, 32) in by_level and (generator, fmt, 64) in by_level:
            at32, at64 = (by_level[(generator, fmt, c)][0]["images_per_s"] for c in (32, 64))
            checks.append(
                (
                    f"{name}: 64 clients at {at64 / at32:.2f}x of 32 clients (goal >= 0.9)",
                    at64 >= 0.9 * at32,
                )
            )
    errors = sum(r["errors"] for r in result["rows"] if r["server"] == "ours")
    checks.append((f"errors of ours at every level: {errors} (goal 0)", errors == 0))
    return [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="offline-lite0-minilm", help="comma-separated")
    parser.add_argument("--servers", default=",".join(SERVERS), help="ours and/or bentoml")
    parser.add_argument("--formats", default=",".join(FORMATS), help="multipart and/or json")
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated levels")
    parser.add_argument(
        "--generators",
        default=",".join(GENERATORS),
        help="load generators: ours (raw HTTP/1.1 on asyncio) and/or wrk (the Debian package)",
    )
    parser.add_argument(
        "--wrk-seconds", type=float, default=10.0, help="timed seconds of each wrk level"
    )
    parser.add_argument("--requests", type=int, default=512, help="timed requests per level")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, alternating the order")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument(
        "--image-size", type=int, default=256, help="side of the JPEG each request sends (px)"
    )
    parser.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="both servers decode large JPEGs at a reduced scale (RCS_PREDICT_JPEG_DRAFT)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server processes, for both servers alike"
    )
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="OMP_NUM_THREADS of both servers (0: all)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--engine",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="what runs our server's forward passes (RCS_PREDICT_ENGINE; its default: auto)",
    )
    parser.add_argument(
        "--peer-engine",
        choices=("torch", "onnxruntime"),
        default="torch",
        help="what runs BentoML's passes: torch, as its examples load a model, or onnxruntime "
        "(our verified export), to compare the two servers on one engine",
    )
    parser.add_argument("--limit-seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--report", help="print the report of a --json file again")
    parser.add_argument(
        "--profile",
        help="instead: profile our server with py-spy at each level, write the samples and the "
        "per-stage breakdown (breakdown.md) in this folder",
    )
    # One load level in a process of its own (used by the orchestration above).
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--format", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--generator", default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.drive and args.generator == "wrk":
        print(
            json.dumps(
                drive_wrk(
                    args.drive,
                    args.server,
                    args.format,
                    int(args.clients),
                    args.wrk_seconds,
                    args.key,
                    args.image_size,
                )
            )
        )
        return
    if args.drive:
        result = asyncio.run(
            drive(
                args.drive,
                args.server,
                args.format,
                int(args.clients),
                args.requests,
                args.key,
                args.image_size,
            )
        )
        print(json.dumps(result))
        return
    if args.profile:
        run_profile(args)
        return
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        for key in ("device", "max_batch", "workers", "image_size", "engine", "peer_engine"):
            setattr(args, key, saved["args"].get(key, parser.get_default(key)))
        for result in saved["results"]:
            print(report(result, args) + "\n")
        return
    run_models(args, "peer", bench_model, report)


if __name__ == "__main__":
    main()
