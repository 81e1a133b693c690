"""Serving benchmark: the real API process under concurrent load, against the model's own limit.

For each model it
1. writes a zero-shot artifact (10 classes) and registers it in a temporary registry
   (SQLite database and artifact folder, ``RCS_ENV=local``);
2. measures the model's own limit: images/s of a tight loop of batched forward passes
   (``predict_max_batch`` images each, preprocessed once) in a process of its own;
3. measures the loaded-model cache: reading the weights file, loading the model from the
   registry folder, evicting it and loading it again;
4. starts ``python -m service serve`` with the model as ``RCS_DEFAULT_MODEL``, waits for
   ``/readyz``, and drives ``POST /predict`` (one JPEG per request, base64 JSON) from a
   separate load-generating process (httpx, asyncio, loopback) with 1, 8, 32 and 64
   concurrent clients, a bounded number of requests each: images/s, latency percentiles,
   errors, mean images per forward pass (from ``/metrics``) and the server's peak RSS;
5. does step 4 again with ``RCS_PREDICT_BATCHING=false``: the naive baseline.

``--engines torch,onnxruntime`` does steps 2 and 4 for each engine (``RCS_PREDICT_ENGINE``:
the version's ONNX export run by ONNX Runtime), interleaved in one run; ``--protocols
predict,v2`` drives the Open Inference Protocol's ``POST /v2/models/{name}/infer`` (the same
JPEG as a BYTES tensor, top-3 labels) beside ``/predict`` on the same server.

Run from the repository root (a few minutes on 2 CPU cores):

    .venv/bin/python bench/serve.py
    .venv/bin/python bench/serve.py --models ViT-B-32 --clients 1,32 --requests 128
    .venv/bin/python bench/serve.py --device cuda --models ViT-B-16 --max-batch 64   # GPU
    .venv/bin/python bench/serve.py --engines torch,onnxruntime --protocols predict,v2 \
        --modes batched --clients 32,64                                               # ONNX

The load generator shares the machine with the server; on a small CPU machine its own work
(building requests, parsing answers) is part of what limits the served rate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the service load lazily: the orchestration needs neither
    from torch import Tensor

    from service.predict.cache import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MODELS = ("offline-lite0-minilm", "ViT-B-32")
CLASSES = [f"class {i}" for i in range(10)]
REGISTERED = "bench"
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 120.0


# --- the model: artifact, registry, own limit, cache -------------------------------------------


def write_artifact(arch: str, folder: Path) -> Path:
    """A zero-shot artifact of ``arch`` (random weights unless ``arch`` ships its own)."""
    import torch

    from models.artifacts import save_artifact
    from models.backbone import create_backbone
    from models.config import BackboneConfig
    from models.heads import Classifier

    torch.manual_seed(0)
    backbone = create_backbone(BackboneConfig(arch=arch, pretrained=None))
    descriptions = {c: [f"an object of {c} with a distinct shape"] for c in CLASSES}
    classifier = Classifier(backbone, CLASSES, ["a photo of a {c}.", "a {c}."], descriptions)
    return save_artifact(folder, classifier, {"objective": "zeroshot", "bench": "serve"})


def register(env: dict[str, str], folder: Path) -> None:
    """Register ``folder`` as version 1 of the bench model, as a worker would."""
    from models.artifacts import read_card
    from service.db.engine import make_engine, make_sessionmaker
    from service.db.migrate import upgrade
    from service.registry import service as registry
    from service.storage import ArtifactStore

    upgrade(env["RCS_DATABASE_URL"])
    store = ArtifactStore(env["RCS_ARTIFACTS_URL"], Path(env["RCS_WORK_DIR"]) / "cache")
    with make_sessionmaker(make_engine(env["RCS_DATABASE_URL"]))() as session:
        row = registry.begin_version(session, REGISTERED, "bench-" + "0" * 24, read_card(folder))
        source = store.put_folder(folder, registry.version_key(REGISTERED, row.version))
        registry.mark_ready(session, row, source, registry.artifact_digest(folder))
        session.commit()


def sample_images(n: int = 16, size: int = 256) -> list[bytes]:
    """JPEGs with some structure (a disc on a gradient), each a little different."""
    from PIL import Image, ImageDraw

    images = []
    for i in range(n):
        image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
        draw = ImageDraw.Draw(image)
        r = size // 4 + 3 * i
        draw.ellipse(
            (size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r), fill=(i * 15, 90, 200)
        )
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def back_to_back(
    model: LoadedModel, one: Tensor, batch: int, min_s: float, min_passes: int
) -> dict[str, Any]:
    """Forward passes of ``batch`` images (``one``, preprocessed, repeated to fill it), back to
    back for at least ``min_s`` seconds and ``min_passes`` passes after two untimed: the passes
    run, images/s and the process's CPU ms per image."""
    import torch

    from service.predict.service import forward

    inputs = torch.cat([one] * (batch // len(one) + 1))[:batch]
    for _ in range(2):
        forward(model, inputs)
    passes, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while passes < min_passes or time.perf_counter() - started < min_s:
        forward(model, inputs)
        passes += 1
    elapsed = time.perf_counter() - started
    return {
        "batch": batch,
        "passes": passes,
        "images_per_s": passes * batch / elapsed,
        "cpu_ms_per_image": (time.process_time() - cpu_started) * 1000 / (passes * batch),
    }


def own_limit(
    folder: Path, device: str, batch: int, min_s: float, engine: str = "torch"
) -> dict[str, Any]:
    """Images/s of back-to-back forward passes of ``batch`` preprocessed images, no server;
    ``engine`` as ``RCS_PREDICT_ENGINE`` (onnxruntime: the artifact's export, made first)."""
    import torch

    from service.predict.cache import Engine, load, warm_up
    from service.predict.service import ImageInput, preprocess

    model = load(REGISTERED, 1, folder, device, Engine(engine, folder.parent / "onnx"))
    if model.engine != engine:
        raise RuntimeError(f"{folder} could not be served by {engine} (see the log above)")
    warm_up(model)
    images = [ImageInput(data, None, f"images[{i}]") for i, data in enumerate(sample_images())]
    timed = back_to_back(model, preprocess(model, images, 40_000_000), batch, min_s, 5)
    # Preprocessing is the server's other per-image cost: time it alone too.
    t0 = time.perf_counter()
    for _ in range(4):
        preprocess(model, images, 40_000_000)
    decode_ms = (time.perf_counter() - t0) / (4 * len(images)) * 1000
    return {
        **timed,
        "preprocess_ms_per_image": decode_ms,
        "torch_threads": torch.get_num_threads(),
        "engine": engine,
    }


def cache_timings(folder: Path, device: str) -> dict[str, Any]:
    """Reading the weights vs loading the model from them; evicting and loading again."""
    from safetensors.torch import load_file

    from models.artifacts import HEADS, WEIGHTS
    from service.predict.cache import ModelCache, warm_up

    weights = folder / WEIGHTS
    weights.read_bytes()  # the page cache now holds it, as it would for a recently used model
    t0 = time.perf_counter()
    raw = weights.read_bytes()
    read_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_file(str(weights))
    load_file(str(folder / HEADS))
    tensors_s = time.perf_counter() - t0

    cache = ModelCache(max_bytes=1 << 40, device=device)
    timings = {}
    for name in ("load", "reload after eviction"):
        t0 = time.perf_counter()
        model = cache.get(REGISTERED, 1, lambda: folder)  # builds, loads and warms up
        timings[name] = time.perf_counter() - t0
        cache.evict(REGISTERED, 1)
    t0 = time.perf_counter()
    warm_up(model)
    warm_s = time.perf_counter() - t0
    return {
        "weights_mib": len(raw) / 2**20,
        "read_s": read_s,
        "safetensors_s": tensors_s,
        "load_s": timings["load"],
        "reload_s": timings["reload after eviction"],
        "warm_up_s": warm_s,
    }


# --- the server and the load generator ---------------------------------------------------------


def server_env(
    tmp: Path, device: str, max_batch: int, batching: bool, engine: str = "torch"
) -> dict[str, str]:
    return {
        **os.environ,
        "RCS_ENV": "local",
        "RCS_AUTH_DISABLED": "true",
        "RCS_DATABASE_URL": f"sqlite:///{tmp / 'rcs.db'}",
        "RCS_BROKER_URL": f"sqla+sqlite:///{tmp / 'broker.db'}",
        "RCS_ARTIFACTS_URL": str(tmp / "artifacts"),
        "RCS_WORK_DIR": str(tmp / "work"),
        "RCS_DEFAULT_MODEL": REGISTERED,
        "RCS_DEVICE": device,
        "RCS_PREDICT_BATCHING": "true" if batching else "false",
        "RCS_PREDICT_MAX_BATCH": str(max_batch),
        "RCS_PREDICT_ENGINE": engine,
        "PYTHONPATH": str(ROOT),
    }


@contextmanager
def running_server(env: dict[str, str], log: Path) -> Any:
    """``python -m service serve`` on a free port, ready (default model warmed) when yielded."""
    from tools.processes import Process, free_port, wait_ready

    port = free_port()
    cmd = [sys.executable, "-m", "service", "serve", "--port", str(port)]
    server = Process("api", cmd, log, env).start()
    assert server.popen is not None
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server, READY_TIMEOUT_S)
        yield url, server.popen.pid
    finally:
        server.stop(timeout=30)


def peak_rss_mib(pid: int) -> float:
    """The process's high-water resident set (VmHWM) so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_counts(url: str) -> tuple[float, float]:
    """(images, forward passes) of /predict so far, from the server's Prometheus metrics."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = {}
    for name in ("rcs_predict_batch_images_sum", "rcs_predict_batch_images_count"):
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values["rcs_predict_batch_images_sum"], values["rcs_predict_batch_images_count"]


def request_body(data: bytes, protocol: str) -> tuple[str, str]:
    """(path, JSON body) classifying one image, top 3, by ``/predict`` or the V2 ``infer``."""
    text = base64.b64encode(data).decode()
    if protocol == "predict":
        return "/predict", json.dumps({"model": REGISTERED, "images": [text], "top_k": 3})
    body = {
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": [text]}],
        "outputs": [
            {"name": "labels"},
            {"name": "probabilities", "parameters": {"classification": 3}},
        ],
        "parameters": {"top_k": 3},
    }
    return f"/v2/models/{REGISTERED}/infer", json.dumps(body)


async def drive(url: str, clients: int, requests: int, protocol: str = "predict") -> dict[str, Any]:
    """``clients`` concurrent loops posting one image each until ``requests`` have been sent."""
    import httpx

    requests_ = [request_body(data, protocol) for data in sample_images()]
    path = requests_[0][0]
    bodies = [body for _, body in requests_]
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0

    async def client_loop(http: httpx.AsyncClient, timed: bool, quota: int) -> None:
        nonlocal sent
        while sent < quota:
            body = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            try:
                response = await http.post(f"{url}{path}", content=body, headers=headers)
                ok = response.status_code == 200
                reason = str(response.status_code)
            except httpx.HTTPError as exc:
                ok, reason = False, type(exc).__name__
            if timed:
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors[reason] = errors.get(reason, 0) + 1

    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
        # Untimed warm-up: every connection opened, the first passes paid for.
        await asyncio.gather(*(client_loop(http, False, clients) for _ in range(clients)))
        sent = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client_loop(http, True, requests) for _ in range(clients)))
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_started
    ok = len(latencies) - sum(errors.values())
    return {
        "clients": clients,
        "requests": len(latencies),
        "images_per_s": ok / wall,
        "p50_ms": _percentile(latencies, 50) * 1000,
        "p95_ms": _percentile(latencies, 95) * 1000,
        "p99_ms": _percentile(latencies, 99) * 1000,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "wall_s": wall,
        "client_cpu_ms_per_request": client_cpu * 1000 / max(1, len(latencies)),
    }


def _percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def load_levels(
    url: str,
    pid: int,
    levels: list[int],
    requests: int,
    mode: str,
    engine: str = "torch",
    protocol: str = "predict",
) -> list[dict[str, Any]]:
    rows = []
    for clients in levels:
        images_before, passes_before = batch_counts(url)
        cpu_before = cpu_s(pid)
        n = max(requests, 4 * clients)
        out = _self(
            ["--drive", url, "--clients", str(clients), "--requests", str(n)]
            + ["--protocols", protocol]
        )
        cpu_used = cpu_s(pid) - cpu_before
        images_after, passes_after = batch_counts(url)
        passes = passes_after - passes_before
        row = {
            "mode": mode,
            "engine": engine,
            "protocol": protocol,
            **out,
            "mean_batch": (images_after - images_before) / passes if passes else float("nan"),
            # Includes the untimed warm-up requests: CPU per image served, steadier than wall
            # time on a shared machine.
            "server_cpu_ms_per_image": cpu_used * 1000 / (n + clients),
            "peak_rss_mib": peak_rss_mib(pid),
        }
        label = f"{mode} {engine} {protocol}"
        print(f"  {label:30s} {clients:3d} clients: {row['images_per_s']:.1f} images/s", flush=True)
        rows.append(row)
    return rows


def _self(args: list[str], script: str = __file__) -> dict[str, Any]:
    """Run ``script`` (this one unless told) in a fresh process (one measurement each) and read
    its JSON line."""
    cmd = [sys.executable, script, *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def bench_model(arch: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    print(f"{arch}:", flush=True)
    folder = write_artifact(arch, tmp / "artifact")
    levels = [int(c) for c in args.clients.split(",")]
    device = args.device
    engines = args.engines.split(",")
    limits = {}
    for engine in engines:  # each engine's own limit, back to back, before any server runs
        limits[engine] = _self(
            ["--limit", str(folder), "--device", device, "--max-batch", str(args.max_batch)]
            + ["--limit-seconds", str(args.limit_seconds), "--engines", engine]
        )
        print(f"  own limit ({engine}): {limits[engine]['images_per_s']:.1f} images/s", flush=True)
    cache = _self(["--cache", str(folder), "--device", device])
    rows = []
    for engine in engines:
        for batching in [mode == "batched" for mode in args.modes.split(",")]:
            mode = "batched" if batching else "naive"
            run_dir = tmp / f"{mode}-{engine}"
            env = server_env(run_dir, device, args.max_batch, batching, engine)
            register(env, folder)
            with running_server(env, tmp / f"server-{run_dir.name}.log") as (url, pid):
                for protocol in args.protocols.split(","):
                    rows += load_levels(url, pid, levels, args.requests, mode, engine, protocol)
    limit = limits[engines[0]]
    return {"arch": arch, "limit": limit, "limits": limits, "cache": cache, "rows": rows}


# --- the report ---------------------------------------------------------------------------------


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    limit = result["limit"]["images_per_s"]
    cpu_limit = result["limit"]["cpu_ms_per_image"]
    lines = [
        f"### {result['arch']} (device {args.device}, max batch {args.max_batch})",
        "",
        f"Own limit: {limit:.1f} images/s, {result['limit']['cpu_ms_per_image']:.1f} CPU ms per "
        f"image (back-to-back passes of {args.max_batch} images, "
        f"{result['limit']['torch_threads']} torch threads); preprocessing alone "
        f"{result['limit']['preprocess_ms_per_image']:.2f} ms per image.",
        "",
        "| mode | engine | protocol | clients | requests | images/s | vs own limit | p50 ms "
        "| p95 ms | p99 ms | p99/p50 | errors | images/pass | server CPU ms/image "
        "| CPU vs own limit | client CPU ms/request | server peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['mode']} | {r.get('engine', 'torch')} | {r.get('protocol', 'predict')} "
            f"| {r['clients']} | {r['requests']} | {r['images_per_s']:.1f} "
            f"| {r['images_per_s'] / limit:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} "
            f"| {r['p99_ms']:.1f} | {r['p99_ms'] / r['p50_ms']:.2f} | {r['errors']} "
            f"| {r['mean_batch']:.1f} | {r['server_cpu_ms_per_image']:.1f} "
            f"| {cpu_limit / r['server_cpu_ms_per_image']:.2f} "
            f"| {r['client_cpu_ms_per_request']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    lines += ["", *goals(result), *engine_lines(result), "", *cache_lines(result["cache"])]
    return "\n".join(lines)


def engine_lines(result: dict[str, Any]) -> list[str]:
    """ONNX Runtime against torch (own limit, batched /predict per client level) and the V2
    route against /predict (per engine and level), where the run measured both."""
    limits = result.get("limits", {})
    lines = []
    if {"torch", "onnxruntime"} <= set(limits):
        ratio = limits["onnxruntime"]["images_per_s"] / limits["torch"]["images_per_s"]
        lines.append(f"- own limit, onnxruntime vs torch: {ratio:.2f}x")
    at = {
        (r["mode"], r.get("engine", "torch"), r.get("protocol", "predict"), r["clients"]): r
        for r in result["rows"]
    }
    for (mode, engine, protocol, clients), row in sorted(at.items()):
        torch_row = at.get((mode, "torch", protocol, clients))
        if engine == "onnxruntime" and protocol == "predict" and torch_row is not None:
            ratio = row["images_per_s"] / torch_row["images_per_s"]
            lines.append(
                f"- {mode} /predict at {clients} clients, onnxruntime vs torch: {ratio:.2f}x"
            )
        predict = at.get((mode, engine, "predict", clients))
        if protocol == "v2" and predict is not None:
            ratio = row["images_per_s"] / predict["images_per_s"]
            lines.append(
                f"- {mode} {engine} at {clients} clients, V2 infer vs /predict: {ratio:.2f}x"
            )
    return lines


def goals(result: dict[str, Any]) -> list[str]:
    limit = result["limit"]["images_per_s"]
    # The first engine's /predict rows (the others are compared in engine_lines).
    first = result["rows"][0].get("engine", "torch") if result["rows"] else "torch"
    at = {
        (r["mode"], r["clients"]): r
        for r in result["rows"]
        if r.get("engine", "torch") == first and r.get("protocol", "predict") == "predict"
    }
    batched, naive = at.get(("batched", 32)), at.get(("naive", 32))
    if batched is None:
        return ["(no 32-client run: goals not checked)"]
    checks = [
        (
            f"32 clients at {batched['images_per_s'] / limit:.2f} of the own limit (goal >= 0.8)",
            batched["images_per_s"] >= 0.8 * limit,
        ),
        (
            f"p99/p50 at 32 clients {batched['p99_ms'] / batched['p50_ms']:.2f} (goal < 4)",
            batched["p99_ms"] < 4 * batched["p50_ms"],
        ),
        (
            f"errors at every level: {sum(r['errors'] for r in result['rows'])} (goal 0)",
            all(r["errors"] == 0 for r in result["rows"]),
        ),
    ]
    if naive is not None:
        ratio = batched["images_per_s"] / naive["images_per_s"]
        checks.insert(
            1, (f"{ratio:.2f}x the naive baseline at 32 clients (goal >= 3x)", ratio >= 3)
        )
    lines = [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    if "server_cpu_ms_per_image" in batched:
        # On a shared machine the server gets what CPU the others leave it; CPU time per image
        # says how much of the model's own efficiency the serving path keeps, whatever its share.
        own = result["limit"]["cpu_ms_per_image"] / batched["server_cpu_ms_per_image"]
        line = f"- CPU view at 32 clients: the own limit's CPU time per image is {own:.2f} of the "
        line += "server's"
        if naive is not None:
            saved = naive["server_cpu_ms_per_image"] / batched["server_cpu_ms_per_image"]
            line += f"; batching uses {saved:.2f}x less CPU per image than the naive baseline"
        lines.append(line)
    return lines


def cache_lines(cache: dict[str, Any]) -> list[str]:
    return [
        "Loaded-model cache: weights file "
        f"{cache['weights_mib']:.0f} MiB, read in {cache['read_s'] * 1000:.0f} ms "
        f"(safetensors to tensors {cache['safetensors_s'] * 1000:.0f} ms); load from the registry "
        f"folder {cache['load_s'] * 1000:.0f} ms (build, load weights, warm-up pass; warm-up alone "
        f"{cache['warm_up_s'] * 1000:.0f} ms); after eviction, reload "
        f"{cache['reload_s'] * 1000:.0f} ms.",
    ]


def main() -> None:
    # As `python -m service serve` does, and for the own-limit loop too, so both run alike: idle
    # OpenMP threads sleep instead of spinning (spinning starves other threads on a busy CPU).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated")
    parser.add_argument("--clients", default="1,8,32,64", help="comma-separated levels")
    parser.add_argument("--requests", type=int, default=256, help="timed requests per level")
    parser.add_argument("--modes", default="batched,naive", help="batched and/or naive")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--engines", default="torch", help="torch and/or onnxruntime (RCS_PREDICT_ENGINE)"
    )
    parser.add_argument(
        "--protocols", default="predict", help="predict and/or v2 (POST /v2/models/.../infer)"
    )
    parser.add_argument(
        "--limit-seconds", type=float, default=5.0, help="least time of the own-limit loop"
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--report", help="print the report of a --json file again")
    # One measurement each, in a process of its own (used by the orchestration above).
    parser.add_argument("--limit", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.limit:
        limit = own_limit(
            Path(args.limit), args.device, args.max_batch, args.limit_seconds, args.engines
        )
        print(json.dumps(limit))
    elif args.cache:
        print(json.dumps(cache_timings(Path(args.cache), args.device)))
    elif args.report:
        saved = json.loads(Path(args.report).read_text())
        for key in ("device", "max_batch"):
            setattr(args, key, saved["args"][key])
        for result in saved["results"]:
            print(report(result, args) + "\n")
    elif args.drive:
        clients = int(args.clients)
        print(json.dumps(asyncio.run(drive(args.drive, clients, args.requests, args.protocols))))
    else:
        run_all(args)


def run_all(args: argparse.Namespace) -> None:
    run_models(args, "serve", bench_model, report)


def run_models(
    args: argparse.Namespace,
    name: str,
    bench: Callable[[str, argparse.Namespace, Path], dict[str, Any]],
    report: Callable[[dict[str, Any], argparse.Namespace], str],
) -> None:
    """``bench`` each of ``args.models`` in a temporary folder of its own, then print every
    report and save the results to ``args.json`` (shared with bench/peer.py)."""
    results = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for arch in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix=f"rcs-bench-{name}-") as tmp:
            results.append(bench(arch, args, Path(tmp)))
    print(f"\n{name} benchmark, {started}, {os.cpu_count()} CPUs\n")
    for result in results:
        print(report(result, args) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
