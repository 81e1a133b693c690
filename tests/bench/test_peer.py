"""bench/peer.py: its requests are what each server parses, its load generator counts what the
servers answer, its profile stages name the right code, its goals come from the same run; and
(slow) a whole run against BentoML with the tiny model."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from bench import peer

ROOT = Path(__file__).resolve().parents[2]


def test_each_request_is_a_complete_http_request_the_server_can_parse() -> None:
    from starlette.requests import Request

    for server in peer.SERVERS:
        for fmt in peer.FORMATS:
            raw = peer.request_bytes(server, fmt, "127.0.0.1:1", b"\xff\xd8jpeg", "k" * 20)
            head, _, body = raw.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines[1:])
            assert int(headers["Content-Length"]) == len(body)
            assert headers["Authorization"] == "Bearer " + "k" * 20
            if fmt == "json":
                images = json.loads(body)["images"]
                assert len(images) == 1
                continue
            scope = {
                "type": "http",
                "method": "POST",
                "path": lines[0].split()[1],
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }

            async def receive(body: bytes = body) -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def parse(scope: dict[str, Any] = scope) -> Any:
                return await Request(scope, receive).form()

            form = asyncio.run(parse())
            field = "files" if server == "ours" else "images"
            upload = form[field]
            assert asyncio.run(upload.read()) == b"\xff\xd8jpeg"  # type: ignore[union-attr]
            if server == "ours":
                assert form["model"] == peer.REGISTERED and form["top_k"] == str(peer.TOP_K)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def against(handle: Handler, drive: Callable[[str], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """``drive``'s result against a small HTTP server on a free port that ``handle`` answers."""

    async def run() -> dict[str, Any]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await drive(f"http://127.0.0.1:{port}")

    return asyncio.run(run())


def test_the_load_generator_counts_answers_errors_and_closed_connections() -> None:
    """Against a small HTTP server: keep-alive, chunked bodies, errors and closes are counted."""
    answered = {"n": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                answered["n"] += 1
                n = answered["n"]
                if n % 7 == 0:  # an error status
                    writer.write(b"HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nno")
                elif n % 5 == 0:  # chunked
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    )
                elif n % 3 == 0:  # answered, then the connection is closed
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
                    )
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    result = against(handle, lambda url: peer.drive(url, "ours", "json", 4, 60, None))
    assert result["requests"] == 60
    assert result["errors"] == result["error_kinds"]["503"] > 0
    assert result["images_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"]


def test_wrk_sends_the_same_requests_and_its_counts_are_read() -> None:
    """wrk (the second load generator) against a small HTTP server: every body it sends is a
    request our multipart reader parses into the sample image, and its error count is read."""
    from bench.serve import sample_images
    from service.multipart import MultipartReader, boundary_of

    seen: dict[str, Any] = {"n": 0, "refused": 0, "images": set(), "auth": set()}
    images = set(sample_images(size=64))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                lines = head.split("\r\n")
                headers = {
                    k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:]) if k
                }
                body = await reader.readexactly(int(headers["content-length"]))
                parser = MultipartReader(
                    boundary_of(headers["content-type"]), max_files=1, max_fields=4
                )
                parser.feed(body)
                parts = parser.close()
                assert lines[0] == "POST /predict HTTP/1.1"
                assert parts.field("model") == peer.REGISTERED
                seen["images"].add(parts.files[0].data)
                seen["auth"].add(headers["authorization"])
                seen["n"] += 1
                if seen["n"] % 5 == 0:
                    seen["refused"] += 1
                    writer.write(b"HTTP/1.1 429 Busy\r\nContent-Length: 2\r\n\r\nno")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    result = against(
        handle,
        lambda url: asyncio.to_thread(
            peer.drive_wrk, url, "ours", "multipart", 3, 1.0, "k" * 20, 64
        ),
    )
    assert seen["images"] == images  # every sample image, each a valid multipart body
    assert seen["auth"] == {"Bearer " + "k" * 20}
    assert 0 < result["requests"] <= seen["n"] - result["warm_up_requests"]
    assert result["errors"] == result["error_kinds"]["status"] > 0
    assert result["errors"] <= seen["refused"]
    assert result["images_per_s"] > 0 and result["p99_ms"] >= result["p50_ms"]


def test_profile_samples_are_put_in_the_stage_that_names_them(tmp_path: Path) -> None:
    thread = "Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83)"
    auth = "dependency (service/auth/deps.py:88);authorize (service/auth/deps.py:48)"
    sql = "Session.execute (sqlalchemy/orm/session.py:2300)"
    raw = tmp_path / "raw.txt"
    raw.write_text(
        f"{thread};{auth};{sql} 5\n"
        f"{thread};predict_batched (service/predict/service.py:170);"
        "preprocess (service/predict/service.py:95);decode (service/predict/service.py:70);"
        "open_image (models/data/images.py:60);_rgb (models/data/images.py:80) 3\n"
        "Runner.run (asyncio/runners.py:118) 2\n"
        "main (somewhere.py:1) 1\n"
    )
    assert peer.breakdown(raw) == {
        "auth (API key)": 5,
        "decode": 3,
        "event loop": 2,
        "other": 1,
    }


def _row(server: str, fmt: str, clients: int, rate: float, p50: float = 10, p99: float = 20) -> Any:
    return {
        "server": server,
        "format": fmt,
        "clients": clients,
        "images_per_s": rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": 0,
        "server_cpu_ms_per_image": 3.0,
        "mean_batch": 8.0 if server == "ours" else None,
    }


def test_goals_compare_the_two_servers_of_the_same_run() -> None:
    result = {
        "arch": "offline-lite0-minilm",
        "limit": {"images_per_s": 500.0},
        "rows": [
            _row("ours", "json", 32, 300.0),
            _row("bentoml", "json", 32, 200.0),
            _row("ours", "json", 64, 290.0, p50=10, p99=50),
            _row("bentoml", "json", 64, 250.0),
        ],
    }
    lines = peer.goals(result)
    assert "- met: ours, json, 32 clients: 1.50x BentoML (goal >= 1.3)" in lines
    assert "- MISSED: ours, json, 64 clients: 1.16x BentoML (goal >= 1.3)" in lines
    assert "- MISSED: ours, json, 64 clients: p99/p50 5.00 (goal < 4)" in lines
    assert "- met: ours, json, 32 clients: 0.60 of the own limit (goal >= 0.5)" in lines
    assert "- met: ours, json: 64 clients at 0.97x of 32 clients (goal >= 0.9)" in lines
    # Rounds are averaged per level before they are compared.
    result["rows"] += [_row("ours", "json", 32, 100.0), _row("bentoml", "json", 32, 200.0)]
    assert "- MISSED: ours, json, 32 clients: 1.00x BentoML (goal >= 1.3)" in peer.goals(result)
    # Each load generator is judged on its own; 1 client compares the medians.
    result["rows"] = [
        {**_row("ours", "multipart", 1, 90.0, p50=11), "generator": "wrk"},
        {**_row("bentoml", "multipart", 1, 80.0, p50=12), "generator": "wrk"},
        {**_row("ours", "multipart", 64, 150.0), "generator": "wrk"},
        {**_row("bentoml", "multipart", 64, 100.0), "generator": "wrk"},
    ]
    lines = peer.goals(result)
    assert (
        "- met: wrk, multipart, 1 client: p50 11.0 ms against BentoML's 12.0 (goal: at most)"
        in lines
    )
    assert "- met: wrk, multipart, 64 clients: 1.50x BentoML (goal >= 1.3)" in lines


@pytest.mark.slow
def test_a_whole_run_against_bentoml_with_the_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("bentoml", reason="the peer extra (make install) is not installed")
    out = tmp_path / "peer.json"
    cmd = [sys.executable, "bench/peer.py", "--models", "test-tiny-vit", "--clients", "1,4"]
    cmd += ["--requests", "24", "--limit-seconds", "0.5", "--json", str(out), "--wrk-seconds", "1"]
    cmd += ["--peer-engine", "onnxruntime"]  # both servers on one engine: the export's path too
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())["results"][0]
    assert {(r["server"], r["generator"], r["format"], r["clients"]) for r in result["rows"]} == {
        (s, g, f, c)
        for s in peer.SERVERS
        for g in peer.GENERATORS
        for f in peer.FORMATS
        for c in (1, 4)
    }
    assert all(r["errors"] == 0 and r["requests"] > 0 for r in result["rows"])
    assert all(r["requests"] == 24 for r in result["rows"] if r["generator"] == "ours")
    assert "give the same top-1 label for all 16 sample images" in done.stdout
    assert "| wrk | json | 4 |" in done.stdout and "errors of ours at every level: 0" in done.stdout
    # Ours chose its engine (auto) and said so in its log; the report quotes the choice.
    choices = result["engines"]["ours round 0"]  # the thread count (when timed), then the engine
    assert choices and choices[-1].split(" ")[0] in ("torch", "onnxruntime")
    assert "as its processes logged when the model loaded: " + "; ".join(choices) in done.stdout
    assert "our engine auto, BentoML" in done.stdout and "on onnxruntime)" in done.stdout


def test_the_engine_each_process_chose_is_read_from_its_log() -> None:
    log = (
        "INFO service.predict.cache: bench/1: passes use 1 torch thread(s) of 2 (2 thread(s) "
        "47.3 ms, 1 thread(s) 25.5 ms per pass of 4 images; timed in 0.3 s)\n"
        "INFO service.predict.cache: bench/1: passes run in onnxruntime on 1 thread(s) (torch "
        "25.1 ms, onnxruntime/1 9.0 ms per pass of 4 images; export 2.1 s, timed in 0.2 s)\n"
        "INFO service.predict.cache: bench/1: passes run in torch (torch 25.1 ms, onnxruntime/1 "
        "24.0 ms per pass of 4 images; export 0.0 s, timed in 0.2 s)\n"
    )
    assert peer.engine_choices(log) == [
        "1 torch thread(s) of 2",
        "onnxruntime on 1 thread(s)",
        "torch",
    ]


@pytest.mark.slow
def test_the_own_limit_of_several_processes_runs_them_at_once_and_sums_them(
    tmp_path: Path,
) -> None:
    from bench.serve import write_artifact

    folder = write_artifact("test-tiny-vit", tmp_path / "artifact")
    args = argparse.Namespace(
        device="cpu", max_batch=4, limit_seconds=0.3, workers=2, torch_threads=1
    )
    limit = peer.own_limit(folder, args)
    assert len(limit["processes"]) == 2 and all(rate > 0 for rate in limit["processes"])
    assert limit["images_per_s"] == pytest.approx(sum(limit["processes"]))
    assert limit["torch_threads"] == 1  # each ran with the servers' threads, not all of them
    said = peer._limit_processes({"limit": limit})
    assert said.startswith(", 2 processes of 1 torch thread(s) at once: ")
