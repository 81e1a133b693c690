"""Artifacts in and out of the registry: import an archive, export it, re-merge at another alpha.

Round trips give identical logits, alpha 0 and 1 give the two WiSE-FT ends bit for bit, and
hostile archives (traversal, links, bombs, pickles, wrong shapes) are refused with nothing left
behind: no version, no model, no stored or scratch files.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file, save_file

from models.artifacts import (
    CARD,
    FINETUNED,
    HEADS,
    WEIGHTS,
    ZEROSHOT,
    load_artifact,
    read_card,
    save_artifact,
)
from models.cli import main as cli_main
from models.pipeline import cpu_state, load_state
from models.wiseft import merge
from service.auth.service import create_key
from service.context import AppContext
from service.db.tables import ModelVersion, RegisteredModel
from tests.conftest import make_classifier
from tests.service.support import png_bytes, register_artifact

IMAGES = torch.rand(3, 3, 32, 32)


@pytest.fixture(scope="session")
def trained_folder(artifact_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained-run artifact with both WiSE-FT ends, served at alpha 0.5 (made, not trained:
    the ends are a tiny model and a perturbed copy of it)."""
    classifier = make_classifier(0)
    zeroshot = cpu_state(classifier)
    generator = torch.Generator().manual_seed(1)
    finetuned = {
        k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in zeroshot.items()
    }
    load_state(classifier, merge(zeroshot, finetuned, 0.5))
    metrics = read_card(artifact_folder)["metrics"]["zeroshot"]
    curve = [{"alpha": a, "metrics": metrics} for a in (0.0, 0.5, 1.0)]
    card = {
        "objective": "drm",
        "wise": {
            "alphas": [0.0, 0.5, 1.0],
            "selection": "best_id_val",
            "metric": "top1",
            "selected_alpha": 0.5,
            "curve": curve,
        },
        "metrics": {"zeroshot": metrics, "finetuned": metrics, "selected": metrics},
    }
    folder = tmp_path_factory.mktemp("trained") / "model"
    return save_artifact(folder, classifier, card, finetuned, zeroshot_state=zeroshot)


def pack(folder: Path, kind: str = "tgz", top: str | None = "model") -> bytes:
    buffer = io.BytesIO()
    prefix = f"{top}/" if top else ""
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as archive:
            for path in sorted(folder.iterdir()):
                archive.write(path, prefix + path.name)
    else:
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for path in sorted(folder.iterdir()):
                archive.add(path, prefix + path.name)
    return buffer.getvalue()


def tar_of(
    entries: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None
) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(archive)
    return buffer.getvalue()


def files_of(folder: Path) -> dict[str, bytes]:
    return {f"model/{p.name}": p.read_bytes() for p in sorted(folder.iterdir())}


def upload(
    client: TestClient, data: bytes, filename: str = "model.tgz", name: str = "m", **kw: Any
) -> Any:
    return client.post(f"/models/{name}/versions", files={"file": (filename, data)}, **kw)


def logits(folder: Path) -> torch.Tensor:
    classifier = load_artifact(folder, verify=True).classifier
    with torch.no_grad():
        return classifier(IMAGES)


def stored(ctx: AppContext, name: str, version: int) -> Path:
    return ctx.store.local_path(f"{name}/v{version}")


def predict(client: TestClient, ref: str) -> list[Any]:
    files = [("files", ("a.png", png_bytes((200, 60, 60)))), ("files", ("b.png", png_bytes()))]
    response = client.post("/predict", data={"model": ref, "top_k": "4"}, files=files)
    assert response.status_code == 200, response.text
    data: list[Any] = response.json()["data"]
    return data


def assert_nothing_left(ctx: AppContext, tmp_path: Path) -> None:
    with ctx.sessions() as session:
        assert session.query(ModelVersion).count() == 0
        assert session.query(RegisteredModel).count() == 0
    assert not [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    scratch = tmp_path / "work" / "registry"
    assert not scratch.exists() or list(scratch.iterdir()) == []


def test_import_predict_export_reimport_gives_identical_logits(
    client: TestClient, ctx: AppContext, trained_folder: Path, tmp_path: Path
) -> None:
    data = pack(trained_folder)
    response = upload(client, data)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["version"] == 1 and body["status"] == "READY" and body["job_id"] is None
    assert body["origin"]["type"] == "import"
    assert body["origin"]["archive_sha256"] == hashlib.sha256(data).hexdigest()
    assert body["wise_ft"]["selected_alpha"] == 0.5
    first = predict(client, "m/1")
    assert torch.equal(logits(stored(ctx, "m", 1)), logits(trained_folder))

    exported = client.get("/models/m/versions/1/artifact")
    assert exported.status_code == 200, exported.text
    assert exported.headers["x-model-digest"] == body["digest"]
    out = tmp_path / "unpacked"
    with tarfile.open(fileobj=io.BytesIO(exported.content)) as archive:
        assert sorted(archive.getnames()) == sorted(f"m-v1/{p}" for p in _names(trained_folder))
        archive.extractall(out, filter="data")
    assert torch.equal(logits(out / "m-v1"), logits(trained_folder))
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    assert cli_main(["predict", str(out / "m-v1"), str(image)]) == 0

    again = upload(client, exported.content, "m-v1.tar.gz")
    assert again.status_code == 201, again.text
    assert again.json()["version"] == 2
    assert again.json()["origin"]["previous"]["type"] == "import"
    assert predict(client, "m/2") == first
    assert torch.equal(logits(stored(ctx, "m", 2)), logits(trained_folder))
    # The same artifact as a flat zip (no top folder) imports too.
    assert upload(client, pack(trained_folder, "zip", top=None), "m.zip").status_code == 201
    assert list((tmp_path / "work" / "registry").iterdir()) == []


def _names(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()]


def test_merge_at_alpha_0_and_1_gives_the_two_ends_exactly(
    client: TestClient, ctx: AppContext, trained_folder: Path
) -> None:
    assert upload(client, pack(trained_folder)).status_code == 201
    ends = {0.0: load_file(trained_folder / ZEROSHOT), 1.0: load_file(trained_folder / FINETUNED)}
    for version, alpha in ((2, 0.0), (3, 1.0)):
        response = client.post("/models/m/versions/1/merge", json={"alpha": alpha})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["version"] == version
        assert body["origin"]["type"] == "merge" and body["origin"]["from"] == "m/1"
        assert body["origin"]["alpha"] == alpha and body["origin"]["from_alpha"] == 0.5
        assert body["wise_ft"]["selected_alpha"] == alpha
        assert [p["alpha"] for p in body["wise_ft"]["curve"]] == [0.0, 0.5, 1.0]
        folder = stored(ctx, "m", version)
        weights = load_file(folder / WEIGHTS)
        end = {k.removeprefix("clip."): v for k, v in ends[alpha].items() if k.startswith("clip.")}
        assert weights.keys() == end.keys()
        assert all(torch.equal(weights[k], end[k]) for k in end)
        # The served model is that end exactly, heads included.
        reference = make_classifier(0)
        load_state(reference, ends[alpha])
        reference.eval()
        with torch.no_grad():
            assert torch.equal(logits(folder), reference(IMAGES))
        report = client.get(f"/models/m/versions/{version}/report")
        assert report.status_code == 200, report.text
        selection = report.json()["selection"]
        assert selection == {
            "rule": "manual",
            "metric": "top1",
            "alpha": alpha,
            "head": report.json()["served_head"],  # the source's, kept by the merge
        }
    # Re-merged back at the original alpha: the same served weights as the original.
    back = client.post("/models/m/versions/3/merge", json={"alpha": 0.5})
    assert back.status_code == 201 and back.json()["origin"]["previous"]["from"] == "m/1"
    original = load_file(stored(ctx, "m", 1) / WEIGHTS)
    remerged = load_file(stored(ctx, "m", 4) / WEIGHTS)
    assert all(torch.equal(original[k], remerged[k]) for k in original)


def test_merge_refusals(
    client: TestClient, ctx: AppContext, trained_folder: Path, artifact_folder: Path
) -> None:
    assert upload(client, pack(trained_folder)).status_code == 201
    off = client.post("/models/m/versions/1/merge", json={"alpha": 0.3})
    assert off.status_code == 422 and off.json()["error"]["param"] == "alpha"
    assert "pick one of 0, 0.5, 1" in off.json()["error"]["message"]
    for bad in (1.5, -0.1, "x"):
        assert client.post("/models/m/versions/1/merge", json={"alpha": bad}).status_code == 422
    assert client.post("/models/m/versions/9/merge", json={"alpha": 0}).status_code == 404
    assert client.post("/models/nope/versions/1/merge", json={"alpha": 0}).status_code == 404
    # A zero-shot run has no ends to merge.
    assert upload(client, pack(artifact_folder), name="zs").status_code == 201
    zeroshot = client.post("/models/zs/versions/1/merge", json={"alpha": 0})
    assert zeroshot.status_code in (409, 422)
    with ctx.sessions() as session:
        assert session.query(ModelVersion).count() == 2


def test_an_artifact_saved_without_its_zeroshot_end_is_not_merged_inexactly(
    client: TestClient, trained_folder: Path, tmp_path: Path
) -> None:
    artifact = load_artifact(trained_folder)
    card = {k: v for k, v in artifact.card.items() if k != "files"}
    old = save_artifact(
        tmp_path / "old", artifact.classifier, card, load_file(trained_folder / FINETUNED)
    )
    assert upload(client, pack(old)).status_code == 201
    response = client.post("/models/m/versions/1/merge", json={"alpha": 1})
    assert response.status_code == 409
    assert "zeroshot.safetensors" in response.json()["error"]["message"]


def _with_card(folder: Path, change: Callable[[dict[str, Any]], None]) -> dict[str, bytes]:
    entries = files_of(folder)
    card = json.loads(entries[f"model/{CARD}"])
    change(card)
    entries[f"model/{CARD}"] = json.dumps(card).encode()
    return entries


def _wrong_heads(folder: Path) -> dict[str, bytes]:
    heads = load_file(folder / HEADS)
    path = folder.parent / "wrong-heads.safetensors"
    save_file({k: torch.zeros(v.shape[0] + 1, v.shape[1]) for k, v in heads.items()}, str(path))
    data = path.read_bytes()

    def relist(card: dict[str, Any]) -> None:
        card["files"][HEADS] = hashlib.sha256(data).hexdigest()

    entries = _with_card(folder, relist)
    entries[f"model/{HEADS}"] = data
    return entries


def _wrong_weights(folder: Path) -> dict[str, bytes]:
    weights = load_file(folder / WEIGHTS)
    key = next(k for k, v in weights.items() if v.dim() == 2)
    weights[key] = torch.zeros(weights[key].shape[0], weights[key].shape[1] + 3)
    path = folder.parent / "wrong-weights.safetensors"
    save_file(weights, str(path))
    data = path.read_bytes()

    def relist(card: dict[str, Any]) -> None:
        card["files"][WEIGHTS] = hashlib.sha256(data).hexdigest()

    entries = _with_card(folder, relist)
    entries[f"model/{WEIGHTS}"] = data
    return entries


def _symlink(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("model/tokenizer.json")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    archive.addfile(info)


PICKLE = pickle.dumps({"x": 1}, protocol=4)
HOSTILE: dict[str, tuple[Callable[[Path], bytes], int, str]] = {
    "traversal": (
        lambda f: tar_of({**files_of(f), "model/../../evil.json": b"{}"}),
        422,
        "unsafe path",
    ),
    "absolute": (lambda f: tar_of({"/tmp/artifact.json": b"{}"}), 422, "absolute"),
    "symlink": (lambda f: tar_of(files_of(f), _symlink), 422, "links, devices"),
    "pickle by name": (
        lambda f: tar_of({**files_of(f), "model/model.pt": PICKLE}),
        422,
        "model/model.pt is a pickled file",
    ),
    "pickle by content": (
        lambda f: tar_of({**files_of(f), f"model/{WEIGHTS}": PICKLE}),
        422,
        f"{WEIGHTS} is a pickled file",
    ),
    "unlisted file": (
        lambda f: tar_of({**files_of(f), "model/config.json": b"{}"}),
        422,
        "config.json",
    ),
    "unknown name": (
        lambda f: tar_of({**files_of(f), "model/notes.txt": b"hi"}),
        422,
        "unexpected file in the archive: model/notes.txt",
    ),
    "no card": (lambda f: tar_of({f"model/{WEIGHTS}": b"x"}), 422, "no artifact.json"),
    "checksum": (
        lambda f: tar_of({**files_of(f), f"model/{HEADS}": (f / ZEROSHOT).read_bytes()}),
        422,
        "does not match the checksum",
    ),
    "wrong head shapes": (
        lambda f: tar_of(_wrong_heads(f)),
        422,
        "expected (4, 32) (classes x embedding width)",
    ),
    "wrong weight shapes": (lambda f: tar_of(_wrong_weights(f)), 422, "size mismatch"),
    "card lists a foreign file": (
        lambda f: tar_of(_with_card(f, lambda c: c["files"].update({"model.pkl": "0" * 64}))),
        422,
        "model.pkl",
    ),
    "malformed card": (
        lambda f: tar_of(_with_card(f, lambda c: c.update(classnames="circle"))),
        422,
        "'classnames' is missing or malformed",
    ),
    "not an archive": (lambda f: b"just bytes", 422, "not a readable tar archive"),
    "bomb": (
        lambda f: tar_of({f"model/{WEIGHTS}": bytes(64 * 1024 * 1024)}),
        413,
        "compression ratio limit",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_and_leave_nothing(
    case: str, client: TestClient, ctx: AppContext, trained_folder: Path, tmp_path: Path
) -> None:
    build, status, message = HOSTILE[case]
    response = upload(client, build(trained_folder))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error
    assert str(tmp_path) not in error["message"]
    assert_nothing_left(ctx, tmp_path)


def test_a_zip_symlink_is_refused(client: TestClient, ctx: AppContext, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("model/artifact.json")
        info.external_attr = 0o120777 << 16  # a symlink entry
        archive.writestr(info, "/etc/passwd")
    response = upload(client, buffer.getvalue(), "m.zip")
    assert response.status_code == 422 and "links" in response.json()["error"]["message"]
    assert_nothing_left(ctx, tmp_path)


@pytest.mark.parametrize("settings_overrides", [{"max_upload_bytes": 4096}])
def test_an_archive_over_the_upload_cap_is_413(
    client: TestClient, ctx: AppContext, trained_folder: Path, tmp_path: Path
) -> None:
    response = upload(client, pack(trained_folder))
    assert response.status_code == 413
    assert_nothing_left(ctx, tmp_path)


def test_a_failed_copy_to_the_store_leaves_nothing(
    client: TestClient,
    ctx: AppContext,
    trained_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = ctx.store.put_folder

    def half_then_fail(local: Path, key: str) -> str:
        real(local, key)  # the files are there, then the store fails
        raise OSError("store went away")

    monkeypatch.setattr(ctx.store, "put_folder", half_then_fail)
    with pytest.raises(OSError):
        upload(client, pack(trained_folder))
    with ctx.sessions() as session:
        assert session.query(ModelVersion).count() == 0
    assert not [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    monkeypatch.undo()
    # The number taken by the failed attempt is not reused; the next import works.
    assert upload(client, pack(trained_folder)).json()["version"] == 2


def test_idempotency_key_replays_and_refuses_another_body(
    client: TestClient, trained_folder: Path, artifact_folder: Path
) -> None:
    headers = {"Idempotency-Key": "import-1"}
    data = pack(trained_folder)  # a retry sends the same bytes (gzip headers hold a time)
    first = upload(client, data, headers=headers)
    again = upload(client, data, headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["version"] == first.json()["version"] == 1
    other = upload(client, pack(artifact_folder), headers=headers)
    assert other.status_code == 409 and other.json()["error"]["param"] == "Idempotency-Key"
    merge_headers = {"Idempotency-Key": "merge-1"}
    merged = client.post("/models/m/versions/1/merge", json={"alpha": 0}, headers=merge_headers)
    replay = client.post("/models/m/versions/1/merge", json={"alpha": 0}, headers=merge_headers)
    assert (merged.status_code, replay.status_code) == (201, 200)
    assert merged.json()["version"] == replay.json()["version"] == 2
    changed = client.post("/models/m/versions/1/merge", json={"alpha": 1}, headers=merge_headers)
    assert changed.status_code == 409
    # Without the header, each request makes a version (as MLflow's create_model_version).
    assert upload(client, pack(trained_folder)).json()["version"] == 3


def test_transfer_needs_the_train_scope(
    client: TestClient, ctx: AppContext, trained_folder: Path
) -> None:
    assert upload(client, pack(trained_folder)).status_code == 201
    with ctx.sessions() as session:
        _, key = create_key(session, "p", ["predict"])
    headers = {"Authorization": f"Bearer {key}"}
    assert upload(client, pack(trained_folder), headers=headers).status_code == 403
    assert client.get("/models/m/versions/1/artifact", headers=headers).status_code == 403
    merged = client.post("/models/m/versions/1/merge", json={"alpha": 0}, headers=headers)
    assert merged.status_code == 403
    # What a predict key reads of an imported version: its origin, no server path.
    seen = client.get("/models/m/versions/1", headers=headers).json()
    assert seen["origin"]["type"] == "import" and seen["source"] == "models:/m/1"


def test_export_refuses_a_corrupted_stored_artifact(
    client: TestClient, ctx: AppContext, trained_folder: Path
) -> None:
    assert upload(client, pack(trained_folder)).status_code == 201
    (stored(ctx, "m", 1) / HEADS).write_bytes((trained_folder / ZEROSHOT).read_bytes())
    response = client.get("/models/m/versions/1/artifact")
    assert response.status_code == 503
    assert "checksum" in response.json()["error"]["message"]


def test_bad_names_and_missing_parts(client: TestClient, trained_folder: Path) -> None:
    assert upload(client, pack(trained_folder), name="-bad").status_code == 422
    response = client.post("/models/m/versions", data={"description": "x"})
    assert response.status_code in (400, 422)
    assert client.get("/models/m/versions/1/artifact").status_code == 404


def test_job_registered_versions_still_show_their_job(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "j", artifact_folder, "ftjob-" + "b" * 24)
    body = client.get("/models/j/versions/1").json()
    assert body["job_id"] == "ftjob-" + "b" * 24 and body["origin"] is None


def test_the_folder_the_cli_writes_imports_as_it_is(
    client: TestClient, ctx: AppContext, trained_folder: Path, tmp_path: Path
) -> None:
    """`python -m models finetune` writes its resolved run config beside the artifact; the
    folder packed as it is (docs/guides/main-flows.md's walk-through) imports, without that file."""
    folder = tmp_path / "my-task"
    shutil.copytree(trained_folder, folder)
    (folder / "config.yaml").write_text("output_dir: runs/my-task\n")
    response = upload(client, pack(folder, top="my-task"))
    assert response.status_code == 201, response.text
    assert "config.yaml" not in _names(stored(ctx, "m", 1))
    # Elsewhere in the archive, or as a folder, the name is still refused.
    entries = {**files_of(trained_folder), "model/sub/config.yaml": b"x: 1\n"}
    assert upload(client, tar_of(entries), name="n").status_code == 422
