"""A real S3 server process for the tests and bench/storage.py: moto's standalone server
(``python -m moto.server``, the dev dependency ``moto[server]``), on a free port, and the AWS
environment that points botocore (and so s3fs) at it. Nothing here fakes S3 in-process: every
call goes over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tools.processes import free_port

# Credentials the server accepts (moto checks none unless told to); never real ones.
ACCESS_KEY, SECRET_KEY = "rcs-test-access", "rcs-test-secret"


@contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """The server's endpoint URL while it runs; it is stopped at the end."""
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto's server exited: {log_path.read_text()[-2000:]}")
            try:
                httpx.get(f"{endpoint}/moto-api/", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def aws_env(endpoint: str, **overrides: str) -> dict[str, str]:
    """What a process needs to reach the server: the credentials, the endpoint, a region, and
    no configuration files or instance metadata of this machine."""
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    env.update(overrides)
    return env


def new_bucket(fs: Any) -> str:
    """A fresh bucket's name."""
    name = f"rcs-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return name
