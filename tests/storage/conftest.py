"""The S3 server process (one per test session) and an S3 environment for each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools.s3_server import aws_env, moto_server, new_bucket


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's environment pointed at the server (and only at it)."""
    env = aws_env(s3_endpoint)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket_url(s3_env: dict[str, str]) -> str:
    """``s3://<fresh bucket>/rcs``: an RCS_STORAGE_URL of its own for each test."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
    return f"s3://{new_bucket(fs)}/rcs"


@pytest.fixture
def s3fs_client(s3_env: dict[str, str], s3_endpoint: str) -> object:
    """The test's own client of the server: straight to it, whatever the test then does to
    the environment (a worker behind a proxy)."""
    import s3fs

    return s3fs.S3FileSystem(
        skip_instance_cache=True,
        use_listings_cache=False,
        client_kwargs={"endpoint_url": s3_endpoint},
    )
