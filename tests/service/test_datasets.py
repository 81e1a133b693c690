"""Dataset registration by server path and by uploaded archive; description sets."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models.synthetic import write_shapes_dataset


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
        inspect(root, "path")
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
