"""Dataset registration by server path and by uploaded archive; description sets."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from models.data.synthetic import write_shapes_dataset
from service.app import create_app
from service.context import AppContext
from tests.service.support import API_KEY, AUTH, FakeBroker, finetune_body, make_settings


def test_register_by_path_reports_classes_splits_counts_fingerprint(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    assert dataset["object"] == "dataset"
    assert dataset["classes"] == ["circle", "cross", "square", "triangle"]
    assert set(dataset["splits"]) == {"train", "val", "test", "ood_test"}
    assert dataset["splits"]["train"]["circle"] == 8
    assert len(dataset["fingerprint"]) == 64
    assert client.get(f"/datasets/{dataset['id']}").json() == dataset
    assert client.get("/datasets").json()["data"] == [dataset]


def test_path_outside_allowed_roots_is_refused(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/datasets", json={"name": "x", "path": str(tmp_path)})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "path"
    assert "not under an allowed dataset root" in response.json()["error"]["message"]


def test_symlink_out_of_a_root_is_refused(client: TestClient, shapes_root: Path) -> None:
    link = shapes_root / "escape"
    link.symlink_to("/etc")
    try:
        response = client.post("/datasets", json={"name": "x", "path": str(link)})
    finally:
        link.unlink()
    assert response.status_code == 422


def test_unreadable_images_are_all_reported(tmp_path: Path, shapes_root: Path) -> None:
    from service.datasets.service import inspect
    from service.errors import InvalidRequest

    root = write_shapes_dataset(tmp_path / "bad", per_class=2, size=16)
    (root / "train" / "circle" / "0000.png").write_bytes(b"not a png")
    (root / "val" / "cross" / "0001.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InvalidRequest) as caught:
        inspect(root, "path", root)
    message = caught.value.message
    assert message.startswith("2 unreadable image(s)")
    assert "train/circle/0000.png" in message and "val/cross/0001.png" in message


def test_unknown_dataset_is_404(client: TestClient) -> None:
    response = client.get("/datasets/ds-nope")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "no dataset 'ds-nope'"


def _archive(root: Path, kind: str) -> bytes:
    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in root.rglob("*"):
                archive.write(path, Path("shapes") / path.relative_to(root))
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(root, arcname="shapes")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_upload_archive_registers_the_same_fingerprint(
    client: TestClient, dataset: dict[str, Any], shapes_root: Path, kind: str
) -> None:
    data = _archive(shapes_root, kind)
    response = client.post(
        "/datasets/upload", data={"name": "up"}, files={"file": (f"shapes.{kind}", data)}
    )
    assert response.status_code == 200, response.text
    uploaded = response.json()
    assert uploaded["source"] == "upload"
    assert uploaded["fingerprint"] == dataset["fingerprint"]


def test_upload_errors(client: TestClient, tmp_path: Path) -> None:
    bad = client.post("/datasets/upload", data={"name": "x"}, files={"file": ("a.rar", b"xx")})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "file"
    corrupt = client.post("/datasets/upload", data={"name": "x"}, files={"file": ("a.zip", b"xx")})
    assert corrupt.status_code == 422 and "not a readable zip" in corrupt.json()["error"]["message"]
    missing = client.post("/datasets/upload", data={"name": "x"})
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "file"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../evil.png", b"x")
    evil = client.post(
        "/datasets/upload", data={"name": "x"}, files={"file": ("e.zip", buffer.getvalue())}
    )
    assert evil.status_code == 422 and "unsafe path" in evil.json()["error"]["message"]
    assert not any((tmp_path / "work" / "datasets").glob("ds-*"))


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 1000}])
def test_upload_over_the_cap_is_413(client: TestClient, shapes_root: Path) -> None:
    data = _archive(shapes_root, "zip")
    response = client.post("/datasets/upload", data={"name": "x"}, files={"file": ("s.zip", data)})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("settings_overrides", [{"max_extracted_bytes": 100}])
def test_archive_unpacking_over_the_cap_is_413(client: TestClient, shapes_root: Path) -> None:
    data = _archive(shapes_root, "tar.gz")
    response = client.post("/datasets/upload", data={"name": "x"}, files={"file": ("s.tgz", data)})
    assert response.status_code == 413
    assert "unpacks to" in response.json()["error"]["message"]


def test_description_sets_are_versioned(client: TestClient) -> None:
    a = client.post(
        "/descriptions", json={"name": "d", "descriptions": {"a": "x", "b": ["y", "z"]}}
    )
    assert a.status_code == 200
    assert a.json()["descriptions"] == {"a": ["x"], "b": ["y", "z"]}
    b = client.post("/descriptions", json={"name": "d", "descriptions": {"a": "x2", "b": "y2"}})
    assert b.json()["version"] == 2
    assert client.get(f"/descriptions/{a.json()['id']}").json()["version"] == 1
    listed = client.get("/descriptions", params={"name": "d"}).json()["data"]
    assert [d["version"] for d in listed] == [2, 1]
    empty = client.post("/descriptions", json={"name": "d", "descriptions": {"a": ["  "]}})
    assert empty.status_code == 422
    assert empty.json()["error"]["param"] == "descriptions"
    assert client.get("/descriptions/desc-nope").status_code == 404


def test_uploaded_dataset_folder_is_removed_when_invalid(
    client: TestClient, tmp_path: Path
) -> None:
    root = write_shapes_dataset(tmp_path / "src", per_class=2, size=16)
    shutil.rmtree(root / "train" / "cross")
    (root / "train" / "cross").mkdir()
    data = _archive(root, "zip")
    response = client.post("/datasets/upload", data={"name": "x"}, files={"file": ("s.zip", data)})
    assert response.status_code == 422
    assert "cross" in response.json()["error"]["message"]
    assert list((tmp_path / "work" / "datasets").iterdir()) == []


# --- confinement: every file a dataset reads stays inside its own folder --------------------


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """An allowed root of its own (the session's shapes folder must stay untouched)."""
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def own_client(tmp_path: Path, data_root: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, data_root)
    with TestClient(create_app(settings)) as test_client:
        test_client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        test_client.headers.update(AUTH)
        yield test_client


def _manifest(folder: Path, rows: list[list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,split"] + [",".join(row) for row in rows]
    file = folder / "m.csv"
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return file


def test_manifest_rows_outside_the_dataset_folder_get_one_answer(
    own_client: TestClient, data_root: Path, tmp_path: Path, shapes_root: Path
) -> None:
    outside = tmp_path / "outside.png"  # a real image the server could read
    shutil.copy(shapes_root / "train" / "circle" / "0000.png", outside)
    image = str(shapes_root / "train" / "circle" / "0001.png")
    shutil.copytree(shapes_root / "train", data_root / "set" / "train")
    good = ["train/circle/0000.png", "circle", "train"]
    bodies = []
    for bad in (str(outside), str(tmp_path / "missing.png"), "../../outside.png", image):
        for row_index in (1, 2):
            rows = (
                [good, [bad, "circle", "train"]] if row_index == 2 else [[bad, "circle", "train"]]
            )
            file = _manifest(data_root / "set", rows)
            response = own_client.post("/datasets", json={"name": "m", "path": str(file)})
            assert response.status_code == 422, response.text
            bodies.append(response.text.replace(f"row {row_index}", "row N"))
    assert len(set(bodies)) == 1  # exists or not, absolute or relative: the same bytes
    error = json.loads(bodies[0])["error"]
    assert error["message"] == f"{file}, row N: the path resolves outside the dataset's folder"
    assert error["param"] == "path"
    assert str(tmp_path / "outside") not in bodies[0] and "hostname" not in bodies[0]


def test_manifest_row_naming_etc_is_refused_without_reading_it(
    own_client: TestClient, data_root: Path
) -> None:
    file = _manifest(data_root / "set", [["/etc/hostname", "a", "train"]])
    response = own_client.post("/datasets", json={"name": "m", "path": str(file)})
    assert response.status_code == 422
    assert (
        "cannot identify" not in response.text and "outside the dataset's folder" in response.text
    )


def test_class_folder_symlinked_out_of_the_dataset_is_refused(
    own_client: TestClient, data_root: Path, shapes_root: Path
) -> None:
    shutil.copytree(shapes_root / "train", data_root / "set" / "train")
    shutil.rmtree(data_root / "set" / "train" / "cross")
    (data_root / "set" / "train" / "cross").symlink_to(shapes_root / "train" / "cross")
    response = own_client.post("/datasets", json={"name": "s", "path": str(data_root / "set")})
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert message == "train/cross: the path resolves outside the dataset's folder"


def test_a_dataset_without_a_train_split_is_refused(
    own_client: TestClient, data_root: Path, shapes_root: Path
) -> None:
    shutil.copytree(shapes_root / "val", data_root / "set" / "val")
    response = own_client.post("/datasets", json={"name": "s", "path": str(data_root / "set")})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "the dataset has no 'train' split (found: 'val')"


def test_worker_refuses_a_class_folder_swapped_for_a_symlink_after_registration(
    own_client: TestClient, data_root: Path, shapes_root: Path
) -> None:
    from models.errors import ModelsError
    from service.db.tables import Dataset
    from worker.runner import _check_fingerprint

    shutil.copytree(shapes_root / "train", data_root / "set" / "train")
    response = own_client.post("/datasets", json={"name": "s", "path": str(data_root / "set")})
    assert response.status_code == 200, response.text
    # The same files behind a link out: the fingerprint alone would not notice.
    shutil.rmtree(data_root / "set" / "train" / "cross")
    (data_root / "set" / "train" / "cross").symlink_to(shapes_root / "train" / "cross")
    own_ctx: AppContext = own_client.app.state.ctx  # type: ignore[attr-defined]
    with own_ctx.sessions() as session:
        row = session.get(Dataset, response.json()["id"])
        assert row is not None
        with pytest.raises(ModelsError, match="resolves outside the dataset's folder"):
            _check_fingerprint(row, Path(row.path))


# --- archives: names, kinds, counts, ratio, quota ---------------------------------------------


def _upload(client: TestClient, filename: str, data: bytes) -> Any:
    # A name of its own each time: two live datasets may not share one.
    name = f"u-{uuid.uuid4().hex[:8]}"
    return client.post("/datasets/upload", data={"name": name}, files={"file": (filename, data)})


def _tar_with(root: Path, extra: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(root, arcname="shapes")
        for name, data in extra.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_member_with_an_absolute_path_is_refused_not_stripped(
    client: TestClient, shapes_root: Path, tmp_path: Path
) -> None:
    data = _tar_with(shapes_root, {"/shapes/train/circle/extra.png": b"x"})
    response = _upload(client, "s.tgz", data)
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert message == "unsafe path in archive (absolute): /shapes/train/circle/extra.png"
    assert list((tmp_path / "work" / "datasets").iterdir()) == []


@pytest.mark.parametrize("settings_overrides", [{"max_archive_files": 20}])
def test_archive_with_too_many_entries_is_413(client: TestClient, shapes_root: Path) -> None:
    response = _upload(client, "s.zip", _archive(shapes_root, "zip"))
    assert response.status_code == 413
    assert "over the 20 limit (RCS_MAX_ARCHIVE_FILES)" in response.json()["error"]["message"]


def test_archive_that_inflates_beyond_the_ratio_is_413_before_writing(
    client: TestClient, tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("d/train/a/0.png", bytes(8 * 1024 * 1024))  # 8 MiB of zeros, ~8 KiB
    response = _upload(client, "bomb.zip", buffer.getvalue())
    assert response.status_code == 413
    assert "compression ratio limit of 100" in response.json()["error"]["message"]
    assert not list((tmp_path / "work" / "datasets").rglob("*.png"))


def test_files_that_are_not_images_are_not_kept(
    client: TestClient, shapes_root: Path, tmp_path: Path
) -> None:
    junk = {f"shapes/junk/{i}.txt": b"junk" for i in range(200)}
    response = _upload(client, "s.tgz", _tar_with(shapes_root, junk))
    assert response.status_code == 200, response.text
    kept = list((tmp_path / "work" / "datasets").rglob("*"))
    assert not [p for p in kept if p.suffix == ".txt"]
    assert [p for p in kept if p.suffix == ".png"]


def _archive_size(shapes_root: Path) -> int:
    return sum(p.stat().st_size for p in shapes_root.rglob("*.png"))


@pytest.mark.parametrize("settings_overrides", [{"upload_quota_bytes": 15_000}])
def test_upload_quota_per_key_is_413_until_a_dataset_is_deleted(
    client: TestClient, shapes_root: Path
) -> None:
    size = _archive_size(shapes_root)
    assert size < 15_000 < 2 * size  # one upload fits the quota, two do not
    first = _upload(client, "s.zip", _archive(shapes_root, "zip"))
    assert first.status_code == 200, first.text
    second = _upload(client, "s.zip", _archive(shapes_root, "zip"))
    assert second.status_code == 413
    assert "upload quota (RCS_UPLOAD_QUOTA_BYTES)" in second.json()["error"]["message"]
    assert client.delete(f"/datasets/{first.json()['id']}").status_code == 204
    third = _upload(client, "s.zip", _archive(shapes_root, "zip"))
    assert third.status_code == 200, third.text


@pytest.mark.parametrize("settings_overrides", [{"max_concurrent_uploads": 1}])
def test_a_key_past_its_concurrent_uploads_is_429(
    client: TestClient, shapes_root: Path, ctx: AppContext
) -> None:
    from service.auth.service import hash_key
    from service.datasets.service import _upload_slot
    from service.db.tables import ApiKey

    with ctx.sessions() as session:
        key_id = session.scalars(
            select(ApiKey.id).where(ApiKey.key_hash == hash_key(API_KEY))
        ).one()
    with _upload_slot(key_id, 1):  # as if another upload of this key were unpacking
        busy = _upload(client, "s.zip", _archive(shapes_root, "zip"))
    assert busy.status_code == 429 and busy.headers["Retry-After"] == "5"
    assert _upload(client, "s.zip", _archive(shapes_root, "zip")).status_code == 200


# --- DELETE /datasets/{id} -----------------------------------------------------------------


def test_delete_an_upload_removes_its_files_and_hides_it(
    client: TestClient, shapes_root: Path, tmp_path: Path
) -> None:
    uploaded = _upload(client, "s.zip", _archive(shapes_root, "zip")).json()
    uploads = tmp_path / "work" / "datasets"
    assert [p.name for p in uploads.iterdir()] == [uploaded["id"]]
    assert client.delete(f"/datasets/{uploaded['id']}").status_code == 204
    assert list(uploads.iterdir()) == []
    assert client.get(f"/datasets/{uploaded['id']}").status_code == 404
    assert client.get("/datasets").json()["data"] == []
    again = client.delete(f"/datasets/{uploaded['id']}")
    assert again.status_code == 404


def test_delete_a_path_dataset_keeps_the_users_files(
    own_client: TestClient, data_root: Path, shapes_root: Path
) -> None:
    shutil.copytree(shapes_root / "train", data_root / "set" / "train")
    before = sorted(p for p in (data_root / "set").rglob("*"))
    row = own_client.post("/datasets", json={"name": "s", "path": str(data_root / "set")}).json()
    assert own_client.delete(f"/datasets/{row['id']}").status_code == 204
    assert sorted(p for p in (data_root / "set").rglob("*")) == before
    assert own_client.get(f"/datasets/{row['id']}").status_code == 404


def test_delete_is_409_while_a_job_uses_it_and_history_stays_readable(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    job = client.post("/finetune", json=finetune_body(dataset["id"])).json()
    refused = client.delete(f"/datasets/{dataset['id']}")
    assert refused.status_code == 409
    assert refused.json()["error"]["message"] == (
        f"dataset '{dataset['id']}' is used by job '{job['id']}' (queued); "
        "cancel the job or wait for it to finish"
    )
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 200
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    assert client.get(f"/jobs/{job['id']}").status_code == 200  # the finished job reads back
    again = client.post("/finetune", json=finetune_body(dataset["id"]))
    assert again.status_code == 422 and again.json()["error"]["param"] == "dataset"


def test_delete_needs_the_train_scope(
    client: TestClient, dataset: dict[str, Any], ctx: AppContext
) -> None:
    from service.auth.service import create_key

    with ctx.sessions() as session:
        _, secret = create_key(session, "reader", ["predict"])
        session.commit()
    response = client.delete(
        f"/datasets/{dataset['id']}", headers={"Authorization": f"Bearer {secret}"}
    )
    assert response.status_code == 403
    assert client.get(f"/datasets/{dataset['id']}").status_code == 200


def test_worker_refuses_a_dataset_deleted_while_its_job_was_created(
    client: TestClient, dataset: dict[str, Any], ctx: AppContext
) -> None:
    from models.errors import ModelsError
    from service.db.tables import Dataset
    from worker.runner import _check_fingerprint

    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    with ctx.sessions() as session:
        row = session.get(Dataset, dataset["id"])
        assert row is not None and row.deleted_at is not None  # the row stays for history
        with pytest.raises(ModelsError, match="was deleted"):
            _check_fingerprint(row, Path(row.path))


def test_a_tar_upload_works_on_a_python_without_the_extraction_filter(
    client: TestClient,
    dataset: dict[str, Any],
    shapes_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Python before 3.11.4 (Debian 12's 3.11.2, the compose stand-in image) has no tarfile
    filter: extractall(filter=...) is a TypeError there, which was a 500. Our own checks (no
    links, devices, absolute paths or '..') still refuse what the filter would."""
    plain = tarfile.TarFile.extractall

    def old_extractall(self: tarfile.TarFile, *args: Any, **kwargs: Any) -> None:
        if "filter" in kwargs:
            raise TypeError("extractall() got an unexpected keyword argument 'filter'")
        plain(self, *args, **kwargs)

    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(tarfile.TarFile, "extractall", old_extractall)
    response = _upload(client, "shapes.tar.gz", _archive(shapes_root, "tar.gz"))
    assert response.status_code == 200, response.text
    assert response.json()["fingerprint"] == dataset["fingerprint"]
    evil = _upload(client, "e.tgz", _tar_with(shapes_root, {"shapes/../../evil.png": b"x"}))
    assert evil.status_code == 422 and "unsafe path" in evil.json()["error"]["message"]
