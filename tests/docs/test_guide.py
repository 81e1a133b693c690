"""docs/guides/main-flows.md's walk-through, run as written: the ```bash blocks of "Running it
by hand" and "The main flows", in order, as one bash script (``set -euo pipefail``), against the
real API and worker it starts (local mode: SQLite, Kombu's SQLite broker) in a fresh folder. The
doc is the script: a step it lacks, or a command that no longer works, fails this test."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tools.processes import ROOT, free_port, process_env

DOC = ROOT / "docs" / "guides" / "main-flows.md"
SECTIONS = ("Running it by hand", "The main flows")
BLOCK = re.compile(r"^```bash\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def guide_script() -> str:
    """The guide's bash blocks, in the doc's order, as one script."""
    text = DOC.read_text(encoding="utf-8")
    blocks = []
    for title in SECTIONS:
        found = BLOCK.findall(section(text, title))
        assert found, f"no ```bash block under '## {title}' in {DOC}"
        blocks += found
    return "\n".join(blocks)


def test_the_guide_is_one_script_bash_parses() -> None:
    script = guide_script()
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    # What the slow test below relies on: the doc starts the processes and picks the port.
    assert "python -m service serve --port $PORT" in script
    assert "python -m worker" in script


def python_on_path(folder: Path) -> Path:
    """A ``python`` command running this interpreter, for a shell whose PATH starts here (the
    doc says `python`, as with its virtual environment active)."""
    folder.mkdir()
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    return folder


def stop_group(pgid: int, timeout: float = 30.0) -> None:
    """SIGTERM to the script's process group (the API and worker it left in the background),
    SIGKILL to whatever is left after ``timeout``."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.mark.slow
def test_the_guide_runs_as_written(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in process_env({}).items() if not k.startswith("RCS_")}
    bin_dir = python_on_path(tmp_path / "bin")
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PORT=str(port))
    work = tmp_path / "work"
    work.mkdir()
    key_file, trace, output = tmp_path / "key", tmp_path / "trace", tmp_path / "output"
    # The doc's commands as they are; around them only strict mode, a trace of the commands
    # (apart from their output) for the failure message, and the key the doc created.
    script = (
        f"exec 3> {trace}; BASH_XTRACEFD=3; PS4='+ $SECONDS s: '; set -xeuo pipefail\n"
        f'{guide_script()}\necho "$RCS_API_KEY" > {key_file}\n'
    )
    started = time.monotonic()
    with open(output, "wb") as out:
        bash = subprocess.Popen(
            ["bash", "-c", script],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        try:
            rc = bash.wait(timeout=900)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - started
        text = output.read_text(errors="replace")
        logs = {name: _read(work / "runs" / f"{name}.log") for name in ("api", "worker")}
        assert rc == 0, _failure(rc, _read(trace), text, logs)
        check_outcome(f"http://127.0.0.1:{port}", key_file.read_text().strip(), text, work)
    finally:
        stop_group(bash.pid)
    logs = {name: _read(work / "runs" / f"{name}.log") for name in ("api", "worker")}
    assert "Traceback" not in logs["worker"], logs["worker"][-4000:]
    assert "Traceback" not in logs["api"], logs["api"][-4000:]
    print(f"the guide ran in {took:.0f} s ({text.count(chr(10))} lines of output)")


def check_outcome(base: str, key: str, output: str, work: Path) -> None:
    """What each step of the guide should have left behind."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:

        def get(path: str) -> Any:
            response = client.get(path)
            assert response.status_code == 200, f"{path}: {response.text}"
            return response.json()

        datasets = {d["name"]: d for d in get("/datasets")["data"]}
        assert set(datasets) == {"shapes", "shapes-spring"}
        assert datasets["shapes-spring"]["source"] == "upload"
        jobs = get("/jobs")["data"]
        assert [j["status"] for j in jobs] == ["succeeded"], jobs
        assert jobs[0]["fine_tuned_model"] == "shapes-drm/1"
        versions = get("/models/shapes-drm/versions")["data"]
        assert sorted(v["version"] for v in versions) == [1, 2]
        assert get("/models/shapes-drm")["aliases"] == {"champion": 1, "challenger": 2}
        imported = get("/models/my-task/versions/1")
        assert imported["status"] == "READY" and imported["origin"]["type"] == "import"
        evaluations = get("/evaluations")["data"]
        # The profile: the shift monitor's reference, queued when the job registered its version.
        assert sorted(e["kind"] for e in evaluations) == ["descriptions", "model", "profile"]
        assert {e["status"] for e in evaluations} == {"succeeded"}
        challenger = next(e for e in evaluations if e["kind"] == "model")
        assert challenger["model"] == "shapes-drm/2"
        assert challenger["dataset"] == datasets["shapes-spring"]["id"]
    # /predict answered top-2 labels for both images; the exported version predicts offline.
    answers = [json.loads(line) for line in output.splitlines() if '"model":"shapes-drm/1"' in line]
    assert [len(item["labels"]) for item in answers[0]["data"]] == [2, 2], answers
    assert re.search(r"^runs/spring/test/circle/0000\.png: \w+ [0-9.]+", output, re.MULTILINE)
    assert (work / "runs" / "report.png").read_bytes().startswith(b"\x89PNG")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _failure(rc: int | None, trace: str, output: str, logs: dict[str, str]) -> str:
    what = "timed out" if rc is None else f"exited {rc}"
    tails = "\n".join(f"--- {name} ---\n{log[-3000:]}" for name, log in logs.items())
    return (
        f"the guide {what}; its last commands:\n{trace[-3000:]}\n"
        f"its last output:\n{output[-4000:]}\n{tails}"
    )
