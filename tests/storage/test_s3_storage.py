"""Every operation of the storage layer (service/storage.py) against a real S3 server process:
artifacts, dataset archives, checkpoint files and index objects, the download cache, and the
start check's one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from models.artifacts import CARD, card_digest
from service.storage import ArtifactStore, Cache, StorageError
from tools.processes import ROOT, free_port
from tools.s3_server import aws_env


def store_for(url: str, tmp_path: Path, cache_bytes: int | None = None) -> ArtifactStore:
    return ArtifactStore(f"{url}/artifacts", tmp_path / "cache", cache_bytes, url)


def artifact(folder: Path, weights: bytes = b"w" * 1000) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / CARD).write_text(json.dumps({"format": "test", "weights": len(weights)}))
    return folder


def dataset_tree(folder: Path) -> Path:
    for split, label, n in (("train", "circle", 3), ("train", "square", 2), ("val", "circle", 1)):
        for i in range(n):
            path = folder / split / label / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(bytes([i]) * (100 + i))
    return folder


def test_artifacts_round_trip_checked_by_digest(
    bucket_url: str, tmp_path: Path, s3fs_client: Any
) -> None:
    store = store_for(bucket_url, tmp_path)
    source = artifact(tmp_path / "a")
    uri = store.put_folder(source, "m/1")
    assert uri == f"{bucket_url}/artifacts/m/1"
    # The card goes last: every other file is there before it.
    assert s3fs_client.exists(f"{uri}/{CARD}") and s3fs_client.exists(f"{uri}/model.safetensors")
    digest = card_digest(source)
    local = store.local_path("m/1", digest)
    assert (local / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert local.parent == tmp_path / "cache" / "artifacts" and local.name == digest
    # Other bytes under the key (another machine replaced it) are refused, not served.
    s3fs_client.pipe_file(f"{uri}/{CARD}", b'{"format": "other"}')
    with pytest.raises(StorageError, match="not the registered one"):
        store.local_path("m/1", "0" * 64)
    store.delete("m/1")
    assert not s3fs_client.exists(uri)
    with pytest.raises(FileNotFoundError):
        store.local_path("m/1", "1" * 64)


def test_a_failed_artifact_upload_leaves_nothing(
    bucket_url: str, tmp_path: Path, s3fs_client: Any
) -> None:
    store = store_for(bucket_url, tmp_path)
    source = artifact(tmp_path / "a")
    real_put = store.fs.put_file

    def drop_at_the_card(local: str, remote: str, **kwargs: Any) -> None:
        # The connection is lost at the last file: the others did reach the server.
        if remote.endswith(CARD):
            raise ConnectionResetError("connection reset by peer")
        real_put(local, remote, **kwargs)

    store.fs.put_file = drop_at_the_card
    with pytest.raises(ConnectionResetError):
        store.put_folder(source, "m/2")
    assert not s3fs_client.exists(f"{bucket_url}/artifacts/m/2")


def test_datasets_go_as_one_tar_named_by_its_digest(
    bucket_url: str, tmp_path: Path, s3fs_client: Any
) -> None:
    store = store_for(bucket_url, tmp_path)
    tree = dataset_tree(tmp_path / "ds")
    uri = store.put_dataset("ds_1", tree, tmp_path)
    assert uri.startswith(f"{bucket_url}/datasets/ds_1/") and uri.endswith(".tar")
    assert not list(tmp_path.glob(".ds_1.*.tar")), "the local tar is removed"
    # The same tree gives the same bytes, so the same name.
    assert store.put_dataset("ds_1", tree, tmp_path) == uri
    with store.dataset_folder(uri) as local:
        files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*.png"))
        assert (local / "train/square/0001.png").read_bytes() == bytes([1]) * 101
    # Cached: served again without the bucket.
    s3fs_client.rm_file(uri)
    with store.dataset_folder(uri) as again:
        assert again == local
    store.delete_dataset(uri)
    assert not s3fs_client.exists(f"{bucket_url}/datasets/ds_1")


def test_a_dataset_archive_with_other_bytes_is_refused(
    bucket_url: str, tmp_path: Path, s3fs_client: Any
) -> None:
    store = store_for(bucket_url, tmp_path)
    uri = store.put_dataset("ds_2", dataset_tree(tmp_path / "ds"), tmp_path)
    s3fs_client.pipe_file(uri, b"not the archive")
    with pytest.raises(StorageError, match="not the .* it was registered with"):
        with store.dataset_folder(uri):
            pass
    assert [p.name for p in (tmp_path / "cache" / "datasets").iterdir() if p.is_dir()] == []


def test_checkpoint_files_index_and_removal(
    bucket_url: str, tmp_path: Path, s3fs_client: Any
) -> None:
    store = store_for(bucket_url, tmp_path)
    step = tmp_path / "step-00000002"
    step.mkdir()
    (step / "model.safetensors").write_bytes(b"m" * 500)
    (step / "trainer.pt").write_bytes(b"t" * 200)
    files = store.put_files(step, "job_1/attempt-1/step-00000002")
    assert set(files) == {"model.safetensors", "trainer.pt"}
    assert store.read_json("job_1/checkpoints.json") is None
    store.write_json("job_1/checkpoints.json", {"latest": 2, "steps": {"2": files}})
    assert store.read_json("job_1/checkpoints.json")["latest"] == 2
    into = tmp_path / "resumed"
    store.get_files("job_1/attempt-1/step-00000002", files, into)
    assert (into / "trainer.pt").read_bytes() == b"t" * 200
    s3fs_client.pipe_file(f"{bucket_url}/jobs/job_1/attempt-1/step-00000002/trainer.pt", b"changed")
    with pytest.raises(StorageError, match="trainer.pt has sha256"):
        store.get_files("job_1/attempt-1/step-00000002", files, tmp_path / "again")
    store.remove("job_1")
    assert not s3fs_client.exists(f"{bucket_url}/jobs/job_1")
    store.remove("job_1")  # nothing left: fine


def test_the_cache_evicts_the_least_recently_used_but_never_one_in_use(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache", max_bytes=2500)

    def filler(size: int) -> Any:
        def fill(tmp: Path) -> None:
            tmp.mkdir()
            (tmp / "data").write_bytes(b"x" * size)

        return fill

    with cache.holding("datasets", "a", filler(1000)) as a:
        cache.get("datasets", "b", filler(1000))
        cache.get("datasets", "b", filler(1000))  # b used again: c will push out... not a
        cache.get("datasets", "c", filler(1000))
        # Over the bound: the least recently used not in use went (a is held, so b).
        assert a.is_dir()
        assert not (tmp_path / "cache/datasets/b").exists()
        assert (tmp_path / "cache/datasets/c").is_dir()
    cache.get("datasets", "d", filler(1000))
    assert not a.exists(), "released, a is now the least recently used"
    with pytest.raises(StorageError, match="not a digest"):
        cache.get("datasets", "../x", filler(1))


def test_a_fill_that_fails_leaves_no_entry(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache", max_bytes=None)

    def broken(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "half").write_bytes(b"x")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        cache.get("artifacts", "e", broken)
    assert [p.name for p in (tmp_path / "cache/artifacts").iterdir() if p.is_dir()] == []


def test_the_start_check_accepts_a_good_configuration(bucket_url: str, tmp_path: Path) -> None:
    store_for(bucket_url, tmp_path).check()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "no credentials found"),
        ({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, "endpoint cannot be reached"),
        ({}, "the bucket does not exist"),
    ],
    ids=["no-credentials", "wrong-endpoint", "no-bucket"],
)
@pytest.mark.slow
def test_a_worker_with_bad_storage_refuses_to_start_with_one_line(
    s3_endpoint: str, tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCS_"))},
        **aws_env(s3_endpoint, **change),
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'offline'}",
        "RCS_ENV": "local",
        "RCS_DATABASE_URL": f"sqlite:///{tmp_path / 'rcs.db'}",
        "RCS_WORK_DIR": str(tmp_path / "work"),
        "RCS_STORAGE_URL": "s3://rcs-no-such-bucket/rcs",
    }
    env = {k: v for k, v in env.items() if v != ""}
    done = subprocess.run(
        [sys.executable, "-m", "worker"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    start = "refusing to start: RCS_STORAGE_URL: s3://rcs-no-such-bucket/rcs cannot be used: "
    assert len(lines) == 1 and lines[0].startswith(start), done.stderr
    assert expected in lines[0] and "rcs-test-secret" not in done.stderr


def test_credentials_in_the_url_are_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="must not contain credentials") as refused:
        Settings(storage_url="s3://AKIA:hunter2@bucket/prefix", env="local")
    assert "hunter2" not in str(refused.value)


def test_unpacking_without_tarfiles_data_filter_keeps_members_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pythons before 3.11.4 (Debian 12's 3.11.2) have no extraction filter: the same rules."""
    import tarfile

    from service.storage import _pack, _unpack

    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    packed = tmp_path / "good.tar"
    _pack(dataset_tree(tmp_path / "ds"), packed)
    _unpack(packed, tmp_path / "out")
    assert (tmp_path / "out/train/square/0001.png").read_bytes() == bytes([1]) * 101
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as archive:
        archive.add(packed, "../escaped.tar")
    with pytest.raises(StorageError, match="unsafe member"):
        _unpack(evil, tmp_path / "out2")
    assert not (tmp_path / "escaped.tar").exists()
