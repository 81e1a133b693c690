"""Hardening of the registry's imports and merges (issue 22, round 2).

- An import whose ``open_clip_config.json`` describes a model far larger than its weights (or
  past ``RCS_MAX_IMPORT_PARAMS``) is refused from the config and the safetensors headers alone:
  no model is built, so the API's memory does not move.
- A full disk (ENOSPC, EDQUOT) while an import, a merge or a dataset upload writes is a 507
  naming the setting that chose the folder, with nothing half-written left.
- A merge racing the deletion of its version answers 404, not the 503 of a damaged copy.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import UploadFile

from models import artifacts
from models.artifacts import CARD, HEADS, OPEN_CLIP_CONFIG
from service.context import AppContext
from service.db.tables import Dataset, ModelVersion
from tests.service.test_registry_transfer import (  # noqa: F401 (a fixture)
    assert_nothing_left,
    files_of,
    pack,
    tar_of,
    trained_folder,
    upload,
)

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


@contextmanager
def peak_rss_growth() -> Iterator[dict[str, int]]:
    """The most this process's resident memory grew above its level at entry, sampled every
    millisecond (a model being built grows it for seconds, so sampling cannot miss it)."""
    if not Path("/proc/self/statm").is_file():
        pytest.skip("needs /proc (Linux) to read the resident memory")
    start, seen, done = _rss(), {"growth": 0}, threading.Event()

    def sample() -> None:
        while not done.is_set():
            seen["growth"] = max(seen["growth"], _rss() - start)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        done.set()
        sampler.join()
        seen["growth"] = max(seen["growth"], _rss() - start)


def _with_config(folder: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    """The artifact with its config changed and the card's sha256 of it made right again (the
    issue's case: every checksum valid, only the architecture a lie)."""
    entries = files_of(folder)
    config = json.loads(entries[f"model/{OPEN_CLIP_CONFIG}"])
    change(config)
    data = json.dumps(config).encode()
    entries[f"model/{OPEN_CLIP_CONFIG}"] = data
    card = json.loads(entries[f"model/{CARD}"])
    card["files"][OPEN_CLIP_CONFIG] = hashlib.sha256(data).hexdigest()
    entries[f"model/{CARD}"] = json.dumps(card).encode()
    return tar_of(entries)


def _vision(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda config: config["model_cfg"]["vision_cfg"].update(values)


MiB = 1024**2


def merge_m1(client: TestClient) -> Any:
    return client.post("/models/m/versions/1/merge", json={"alpha": 0})


def versions(ctx: AppContext) -> int:
    with ctx.sessions() as session:
        return session.query(ModelVersion).count()


# --- item 2: sized before anything is built ---


def test_a_config_of_billions_of_parameters_is_refused_before_any_model_is_built(
    client: TestClient, ctx: AppContext, artifact_folder: Path, tmp_path: Path
) -> None:
    # The zero-shot artifact (13 MB of weights): its upload's own handling costs this process
    # (client and server) about 40 MiB, far under what building the model cost.
    data = _with_config(artifact_folder, _vision(width=8192, layers=4))
    with peak_rss_growth() as memory:
        started = time.perf_counter()
        response = upload(client, data)
        seconds = time.perf_counter() - started
    print(f"answered in {seconds:.3f} s, peak RSS +{memory['growth'] / MiB:.1f} MiB")
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert "RCS_MAX_IMPORT_PARAMS" in error["message"], error
    assert "3,2" in error["message"]  # 3.2 billion, the config's count, named
    # Before the fix: a model of 3.2 billion parameters was built to find out (GBs, seconds).
    assert memory["growth"] < 100 * MiB, memory
    assert_nothing_left(ctx, tmp_path)


@pytest.mark.parametrize("settings_overrides", [{"max_import_params": 1_000_000}])
def test_weights_past_the_setting_are_413_naming_it(
    client: TestClient,
    ctx: AppContext,
    trained_folder: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    response = upload(client, pack(trained_folder))
    assert response.status_code == 413, response.text
    assert "RCS_MAX_IMPORT_PARAMS" in response.json()["error"]["message"]
    assert_nothing_left(ctx, tmp_path)


MISMATCHES = {
    # Within the setting, but not what the weights hold: refused from the headers, still unbuilt.
    "wider": (_vision(width=256), "the weights hold"),
    "more layers": (_vision(layers=40), "the weights hold"),
    "another patch": (_vision(patch_size=4), "positional_embedding"),
    "a config open_clip cannot build": (_vision(pos_embed_type="spiral"), "usable model"),
    "an image size past the limit": (_vision(image_size=8192), "image size"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_config_that_does_not_match_its_weights_is_422_without_growing_memory(
    case: str, client: TestClient, ctx: AppContext, artifact_folder: Path, tmp_path: Path
) -> None:
    change, message = MISMATCHES[case]
    data = _with_config(artifact_folder, change)
    with peak_rss_growth() as memory:
        response = upload(client, data)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"], response.json()
    assert memory["growth"] < 100 * MiB, memory
    assert_nothing_left(ctx, tmp_path)


def test_a_hostile_safetensors_header_is_refused_unread(
    client: TestClient,
    ctx: AppContext,
    trained_folder: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    # A header length of 1 TB: refused from its first 8 bytes, nothing allocated for it.
    heads = (1 << 40).to_bytes(8, "little") + b"{}"
    entries = files_of(trained_folder)
    entries[f"model/{HEADS}"] = heads
    card = json.loads(entries[f"model/{CARD}"])
    card["files"][HEADS] = hashlib.sha256(heads).hexdigest()
    entries[f"model/{CARD}"] = json.dumps(card).encode()
    response = upload(client, tar_of(entries))
    assert response.status_code == 422, response.text
    assert "not a readable safetensors file" in response.json()["error"]["message"]
    assert_nothing_left(ctx, tmp_path)


# --- item 7: a full disk is a 507 naming the setting, and leaves nothing ---


def _full(path: object) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _store_fills_up(code: int) -> Callable[..., Any]:
    real = shutil.copyfile

    def fills_up(src: Any, dst: Any, **kwargs: Any) -> Any:
        # The store's copy fills the disk half way through a file, as a real ENOSPC leaves it.
        if "artifacts" in str(dst):
            data = Path(src).read_bytes()
            Path(dst).write_bytes(data[: len(data) // 2])
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, **kwargs)

    return fills_up


def _no_space(*_: Any, **__: Any) -> None:
    raise _full("/the/full/volume")


async def _no_space_async(*_: Any, **__: Any) -> None:
    raise _full("/the/full/volume")


FULL_WHILE = {
    "storing (ENOSPC)": (shutil, "copyfile", _store_fills_up(errno.ENOSPC), "RCS_ARTIFACTS_URL"),
    "storing (EDQUOT)": (shutil, "copyfile", _store_fills_up(errno.EDQUOT), "RCS_ARTIFACTS_URL"),
    # How tarfile writes a member into RCS_WORK_DIR/registry.
    "unpacking": (tarfile, "copyfileobj", _no_space, "RCS_WORK_DIR"),
    # Starlette spools a file part past 1 MB to the system's temporary folder.
    "receiving": (UploadFile, "write", _no_space_async, "TMPDIR"),
}


@pytest.mark.parametrize("stage", sorted(FULL_WHILE))
def test_a_full_volume_during_an_import_is_507_naming_its_setting_and_leaves_nothing(
    stage: str,
    client: TestClient,
    ctx: AppContext,
    trained_folder: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    owner, attribute, replacement, setting = FULL_WHILE[stage]
    data = pack(trained_folder)  # packed before tarfile is broken
    monkeypatch.setattr(owner, attribute, replacement)
    response = upload(client, data)
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and setting in error["message"], error
    assert str(tmp_path) not in error["message"]
    assert versions(ctx) == 0
    assert not [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    scratch = tmp_path / "work" / "registry"
    assert not scratch.exists() or list(scratch.iterdir()) == []
    monkeypatch.undo()
    assert upload(client, data).status_code == 201


def test_a_full_disk_while_merging_is_507(
    client: TestClient,
    ctx: AppContext,
    monkeypatch: pytest.MonkeyPatch,
    trained_folder: Path,  # noqa: F811
) -> None:
    assert upload(client, pack(trained_folder)).status_code == 201
    monkeypatch.setattr(artifacts, "save_file", _no_space)
    response = merge_m1(client)
    assert response.status_code == 507, response.text
    assert "RCS_WORK_DIR" in response.json()["error"]["message"]
    assert versions(ctx) == 1
    assert list((ctx.settings.work_dir / "registry").iterdir()) == []


def test_a_full_disk_while_unpacking_a_dataset_upload_is_507_and_leaves_nothing(
    client: TestClient,
    ctx: AppContext,
    shapes_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = shutil.make_archive(str(tmp_path / "shapes"), "zip", shapes_root)
    real = shutil.copyfileobj
    written: list[int] = []

    def fills_up(source: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
        # The third image is half written when the disk fills up.
        if len(written) == 2:
            target.write(source.read(10))
            raise _full(getattr(target, "name", "?"))
        written.append(1)
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfileobj", fills_up)
    with open(archive, "rb") as fh:
        response = client.post(
            "/datasets/upload", data={"name": "full"}, files={"file": ("s.zip", fh)}
        )
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and "RCS_WORK_DIR" in error["message"]
    with ctx.sessions() as session:
        assert session.query(Dataset).count() == 0
    uploads = tmp_path / "work" / "datasets"
    assert not uploads.exists() or list(uploads.iterdir()) == []


# --- item 9: a merge racing a deletion of its version ---


def test_a_merge_racing_the_deletion_of_its_version_is_404(
    client: TestClient,
    ctx: AppContext,
    trained_folder: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert upload(client, pack(trained_folder)).status_code == 201
    real = artifacts.load_artifact

    def deleted_meanwhile(folder: Any, *args: Any, **kwargs: Any) -> Any:
        # Between the merge's lookup of m/1 and its read of the files, m/1 is deleted.
        monkeypatch.setattr(artifacts, "load_artifact", real)
        assert client.delete("/models/m/versions/1").status_code == 204
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(artifacts, "load_artifact", deleted_meanwhile)
    response = merge_m1(client)
    assert response.status_code == 404, response.text
    assert "no version 1" in response.json()["error"]["message"]
    assert versions(ctx) == 0


def test_a_merge_of_a_really_damaged_copy_stays_503(
    client: TestClient,
    ctx: AppContext,
    trained_folder: Path,  # noqa: F811
) -> None:
    assert upload(client, pack(trained_folder)).status_code == 201
    (ctx.store.local_path("m/v1") / HEADS).unlink()
    response = merge_m1(client)
    assert response.status_code == 503, response.text
    assert "heads.safetensors is missing" in response.json()["error"]["message"]
    shutil.rmtree(ctx.store.local_path("m/v1"))
    gone = merge_m1(client)
    assert gone.status_code == 503, gone.text  # the row is READY: the copy is damaged
