"""Hostile and bad input against the live API process: images, bodies, archives, paths, texts.

Each answer must be a classification or a 4xx in our error shape; the process must stay up and
its peak memory (``VmHWM``) must not jump.
"""

from __future__ import annotations

import io
import secrets
import shutil
import socket
import stat
import tarfile
import time
import unicodedata
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability.conftest import LiveApi, record, rss_kib
from tests.reliability.images import (
    ACCEPTED,
    GHOSTSCRIPT_LOG,
    OTHER_FORMATS,
    cases,
    encode,
    noise,
)
from tests.service.support import b64


def error_shaped(response: httpx.Response) -> dict[str, Any]:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "param", "type"}
    assert "Traceback" not in error["message"]
    return error


def test_hostile_images_are_classified_or_refused_without_a_memory_spike(
    live_api: LiveApi,
) -> None:
    with live_api.client() as client:
        warm = client.post(
            "/predict", json={"model": "shapes", "images": [b64(encode(noise(), "PNG"))]}
        )
        assert warm.status_code == 200, warm.text
        peak_before = rss_kib(live_api.pid, "VmHWM")
        answers: dict[str, int] = {}
        for name, (make, accepted) in cases().items():
            data = make()
            files = [("files", (f"{name}.img", data, "application/octet-stream"))]
            response = client.post("/predict", data={"model": "shapes"}, files=files)
            answers[name] = response.status_code
            assert response.status_code in accepted, (name, response.status_code, response.text)
            if response.status_code != 200:
                assert f"'{name}.img'" in error_shaped(response)["message"]
            if name in OTHER_FORMATS:  # refused from its signature, naming what is accepted
                message = error_shaped(response)["message"]
                assert message.endswith(ACCEPTED) and "accepted image format" in message, message
                assert OTHER_FORMATS[name] is None or f"looks like {OTHER_FORMATS[name]}" in message
            # The same bytes as base64 JSON take the same path.
            again = client.post("/predict", json={"model": "shapes", "images": [b64(data)]})
            assert again.status_code == response.status_code, (name, again.text)
        for bad in ("not base64!", "data:image/png;base64,@@@", "QUJD="):
            response = client.post("/predict", json={"model": "shapes", "images": [bad]})
            assert error_shaped(response)["param"] == "images[0]"
        growth_mib = (rss_kib(live_api.pid, "VmHWM") - peak_before) / 1024
    assert live_api.process.alive()
    assert growth_mib < 150, f"peak memory grew by {growth_mib:.0f} MiB"
    # The API's gs logs every call (tests/reliability/images.py): the EPS never reached it.
    ghostscript = Path(live_api.settings[GHOSTSCRIPT_LOG])
    assert not ghostscript.exists(), ghostscript.read_text()
    refused = sum(status != 200 for status in answers.values())
    record(
        "hostile_images",
        images=len(answers),
        requests=2 * len(answers) + 4,
        refused_4xx=refused,
        classified=len(answers) - refused,
        other_formats_422=len(OTHER_FORMATS),
        ghostscript_calls=0,
        server_errors=0,
        peak_rss_growth_mib=round(growth_mib, 1),
    )


def raw_request(live_api: LiveApi, head: str, body: bytes = b"", wait_s: float = 10) -> str:
    """Send ``head`` (and ``body``) on a raw socket; the status line of the answer."""
    port = int(live_api.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head.encode() + body)
        answer = sock.recv(4096).decode(errors="replace")
    return answer.split("\r\n", 1)[0]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/predict", "application/json"),
        ("/predict", "multipart/form-data; boundary=x"),
        ("/datasets/upload", "multipart/form-data; boundary=x"),
        ("/descriptions", "application/json"),
        ("/finetune", "application/json"),
    ],
)
def test_a_declared_body_over_the_limit_is_413_before_any_of_it_is_sent(
    live_api: LiveApi, path: str, content_type: str
) -> None:
    # 100 GB declared and none of it sent: an answer at all proves nothing was waited for.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live_api.predict_key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {100 * 1024**3}\r\n\r\n"
    )
    started = time.monotonic()
    assert raw_request(live_api, head) == "HTTP/1.1 413 Request Entity Too Large"
    assert time.monotonic() - started < 5


def test_a_chunked_body_is_cut_off_at_the_limit(live_api: LiveApi) -> None:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live_api.predict_key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"100000\r\n" + b" " * 0x100000 + b"\r\n"  # 1 MiB chunks, 2 MB limit
    peak_before = rss_kib(live_api.pid, "VmHWM")
    assert raw_request(live_api, head, chunk * 3) == "HTTP/1.1 413 Request Entity Too Large"
    assert rss_kib(live_api.pid, "VmHWM") - peak_before < 64 * 1024


def zip_of(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_of(entries: dict[str, bytes], special: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in special or []:
            archive.addfile(info)
    return buffer.getvalue()


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def lying_zip(declared: int) -> bytes:
    """A zip whose headers declare ``declared`` bytes for a member that inflates to 50 MB."""
    data = bytearray(zip_of({"big.png": bytes(50 * 1024 * 1024)}))
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 22 : local + 26] = declared.to_bytes(4, "little")
    data[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(data)


def dataset_files(classes: tuple[str, ...] = ("a", "b")) -> dict[str, bytes]:
    image = encode(noise(16), "PNG")
    return {f"d/train/{c}/{i}.png": image for c in classes for i in range(2)}


def hostile_archives(token: str) -> dict[str, tuple[str, bytes, int]]:
    """name -> (file name, archive, expected status); ``token`` names files that must not
    appear outside the upload folder."""
    escape = f"rcs-escape-{token}.png"
    files = dataset_files()
    device = tarfile.TarInfo("d/train/a/dev")
    device.type = tarfile.CHRTYPE
    return {
        "zip ../": ("a.zip", zip_of({**files, f"../../../{escape}": b"x"}), 422),
        "zip absolute": ("a.zip", zip_of({**files, f"/tmp/{escape}": b"x"}), 422),
        "zip symlink": ("a.zip", zip_of(files, {"d/train/a/l.png": "/etc/passwd"}), 422),
        "zip bomb (declared)": ("a.zip", zip_of({"big.png": bytes(30 * 1024 * 1024)}), 413),
        "zip bomb (lying headers)": ("a.zip", lying_zip(1000), 422),
        "zip in a zip": ("a.zip", zip_of({"inner.zip": zip_of(files)}), 422),
        "zip bomb (ratio)": ("a.zip", zip_of({**files, "d/train/a/z.png": bytes(8 << 20)}), 413),
        "tar ../": ("a.tgz", tar_of({**files, f"../../{escape}": b"x"}), 422),
        "tar absolute": ("a.tgz", tar_of({**files, f"/tmp/{escape}": b"x"}), 422),
        "tar absolute inside": ("a.tgz", tar_of({**files, "/d/train/b/9.png": b"x"}), 422),
        "tar symlink out": (
            "a.tgz",
            tar_of(files, [link("d/train/a/l.png", "/etc/passwd")]),
            422,
        ),
        "tar symlink ../": (
            "a.tgz",
            tar_of(files, [link("d/train/a/l.png", "../../../../../etc/passwd")]),
            422,
        ),
        "tar hard link": (
            "a.tgz",
            tar_of(files, [link("d/train/a/h.png", "/etc/passwd", tarfile.LNKTYPE)]),
            422,
        ),
        "tar device": ("a.tgz", tar_of(files, [device]), 422),
        "tar bomb (declared)": ("a.tgz", tar_of({"big.png": bytes(30 * 1024 * 1024)}), 413),
        "gzip of garbage": ("a.tgz", b"\x1f\x8b\x08\x00" + secrets.token_bytes(200), 422),
        "empty zip": ("a.zip", zip_of({}), 422),
        "unknown extension": ("a.rar", b"Rar!\x1a\x07\x00", 422),
    }


def test_hostile_archives_are_refused_and_nothing_escapes(
    live_api: LiveApi, tmp_path: Path
) -> None:
    token = secrets.token_hex(6)
    uploads = Path(live_api.settings["RCS_WORK_DIR"]) / "datasets"
    archives = hostile_archives(token)
    with live_api.client() as client:
        for name, (filename, data, status) in archives.items():
            response = client.post(
                "/datasets/upload", data={"name": "x"}, files={"file": (filename, data)}
            )
            assert response.status_code == status, (name, response.text)
            error = error_shaped(response)
            if name.startswith("tar absolute"):  # refused for what it is, never stripped
                assert error["message"].startswith("unsafe path in archive (absolute)"), error
        classes = ("çà va", "日本語", "🐱")
        good = client.post(
            "/datasets/upload",
            data={"name": "ok"},
            files={"file": ("ok.zip", zip_of(dataset_files(classes)))},
        )
        assert good.status_code == 200, good.text
        assert good.json()["classes"] == sorted(classes)  # unicode class folders round-trip
    escaped = [p for p in Path("/tmp").rglob(f"*{token}*") if p.is_file()]
    assert escaped == []
    leftovers = [p.name for p in uploads.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # refused archives leave no half-unpacked folder
    assert not [p for p in uploads.rglob("*") if p.is_symlink()]
    record("hostile_archives", archives=len(archives), refused=len(archives), escaped_files=0)


def test_dataset_paths_outside_the_allowed_roots_are_refused(live_api: LiveApi) -> None:
    root = live_api.settings["RCS_ALLOWED_DATASET_ROOTS"]
    paths = [
        "/etc",
        "/",
        f"{root}/../..",
        f"{root}/../../etc/passwd",
        "..",
        ".",
        "~",
        "",
        f"{root}\x00/etc",
        f"{root}/{'a' * 5000}",
        f"{root}/{'a/' * 3000}",
        f"{root}/train/circle/0000.png",
        "file:///etc/passwd",
        "\\\\server\\share",
    ]
    with live_api.client() as client:
        for path in paths:
            response = client.post("/datasets", json={"name": "x", "path": path})
            error = error_shaped(response)
            assert response.status_code == 422, (path, response.text)
            assert error["param"] in ("path", "name"), (path, error)
    record("dataset_paths", paths=len(paths), refused=len(paths))


def test_manifest_rows_escaping_the_dataset_folder_get_one_answer(live_api: LiveApi) -> None:
    """Rows naming an outside file that exists, one that does not, and ``../`` ways out: the
    same 422, byte for byte, so the answer never tells which server paths exist."""
    root = Path(live_api.settings["RCS_ALLOWED_DATASET_ROOTS"])
    manifest = root / f"escape-{secrets.token_hex(4)}.csv"
    rows = ["/etc/hostname", "/etc/no-such-file", "../../../../etc/passwd", "/proc/self/environ"]
    bodies = set()
    try:
        with live_api.client() as client:
            for row in rows:
                manifest.write_text(f"path,label,split\n{row},a,train\n", encoding="utf-8")
                response = client.post("/datasets", json={"name": "x", "path": str(manifest)})
                assert response.status_code == 422, (row, response.text)
                error_shaped(response)
                bodies.add(response.content)
    finally:
        manifest.unlink()
    assert len(bodies) == 1, bodies
    assert b"outside the dataset's folder" in bodies.pop()
    record("manifest_escape", rows=len(rows), distinct_answers=1)


def test_an_uploaded_dataset_deleted_over_http_frees_its_files(live_api: LiveApi) -> None:
    uploads = Path(live_api.settings["RCS_WORK_DIR"]) / "datasets"
    with live_api.client() as client:
        data = zip_of(dataset_files())
        created = client.post(
            "/datasets/upload", data={"name": "d"}, files={"file": ("d.zip", data)}
        )
        assert created.status_code == 200, created.text
        folder = uploads / created.json()["id"]
        assert folder.is_dir()
        assert client.delete(f"/datasets/{created.json()['id']}").status_code == 204
        assert not folder.exists()
        assert client.get(f"/datasets/{created.json()['id']}").status_code == 404


UNICODE = ["çà va", "日本語のクラス", "🐱 cat", "עברית", "e\u0301", "Ω≈ç√", "ℌ𝔢𝔩𝔩𝔬"]


def test_description_sets_with_odd_texts(live_api: LiveApi) -> None:
    refused = [
        {},
        {"a": ""},
        {"a": []},
        {"": "x"},
        {"   ": "x"},
        {"a": "x", "a ": "y"},
        {"a": ["x", 3]},
        {f"c{i}": "x" * 60 for i in range(20_000)},  # over the 1 MiB body limit
        # Control, zero-width and bidi characters, in a class name or a text (the name policy).
        {"a": "\x00"},
        {"a\x00b": "x"},
        {"a": "\u202e\u200b"},
        {"a\u200b": "x"},
        # One class twice: in case, or composed and decomposed.
        {"Cat": "x", "cat": "y"},
        {"\u00e9": "x", "e\u0301": "y"},
    ]
    accepted = [
        {c: f"a photo of {c} {c}" for c in UNICODE},
        {"a": ["same", "same"], "b": "other"},
        {"a": "x" * 100_000},
        {"a": "tab\tnew\nline"},
        {f"c{i}": "x" for i in range(20_000)},
    ]
    with live_api.client() as client:
        for texts in refused:
            response = client.post("/descriptions", json={"name": "odd", "descriptions": texts})
            assert response.status_code in (413, 422), (list(texts)[:3], response.text)
            error_shaped(response)
        for texts in accepted:
            response = client.post("/descriptions", json={"name": "odd", "descriptions": texts})
            assert response.status_code == 200, (list(texts)[:3], response.text)
            stored = client.get(f"/descriptions/{response.json()['id']}").json()["descriptions"]
            # Class names are stored in NFC: "e\u0301" comes back as "\u00e9".
            assert set(stored) == {unicodedata.normalize("NFC", c) for c in texts}
        odd = [
            {"name": name, "descriptions": {"a": "x"}}
            for name in ("", "x" * 201, "a\x00b", "🐱" * 200, "odd\u202e")
        ]
        for body in odd:
            response = client.post("/descriptions", json=body)
            assert response.status_code == 422, (body, response.text)
    record("description_texts", sets=len(refused) + len(accepted) + len(odd), server_errors=0)


def test_jobs_with_missing_extra_or_odd_classes(live_api: LiveApi) -> None:
    from tests.service.support import finetune_body

    root = live_api.settings["RCS_ALLOWED_DATASET_ROOTS"]
    with live_api.client() as client:
        dataset = client.post("/datasets", json={"name": "shapes", "path": root}).json()
        full = finetune_body(dataset["id"])["descriptions"]
        cases: list[tuple[Any, int]] = [
            ({k: v for k, v in full.items() if k != "cross"}, 422),  # a class missing
            ({**full, "hexagon": "six sides"}, 422),  # a class the dataset lacks
            ({**full, "circle": ""}, 422),
            ({**full, "circle": ["round", "round"]}, 200),
            ({**full, "circle": "🐱 " * 300}, 200),
            ("no-such-set", 422),
            ("odd/999", 422),
            (None, 422),  # DRM needs descriptions
        ]
        for descriptions, status in cases:
            body = finetune_body(dataset["id"], descriptions=descriptions)
            response = client.post("/finetune", json=body)
            assert response.status_code == status, (descriptions, response.text)
            if status != 200:
                assert error_shaped(response)["param"] is not None
    record("job_class_names", requests=len(cases), server_errors=0)


def test_a_registered_version_whose_weights_are_a_pickle_is_never_executed(
    live_api: LiveApi, reliability_artifact: Path, tmp_path: Path
) -> None:
    from service.db.engine import make_engine, make_sessionmaker
    from service.storage import ArtifactStore
    from tests.reliability.test_untrusted_files import evil
    from tests.service.support import register_artifact

    marker = tmp_path / "pwned"
    poisoned = tmp_path / "poisoned"
    shutil.copytree(reliability_artifact, poisoned)
    evil(poisoned / "open_clip_model.safetensors", marker)
    settings = live_api.settings
    engine = make_engine(settings["RCS_DATABASE_URL"])
    store = ArtifactStore(settings["RCS_ARTIFACTS_URL"], tmp_path / "cache")
    with make_sessionmaker(engine)() as session:
        register_artifact(session, store, "poisoned", poisoned, "ftjob-" + "e" * 24)
    engine.dispose()
    image = b64(encode(noise(), "PNG"))
    with live_api.client() as client:
        response = client.post("/predict", json={"model": "poisoned", "images": [image]})
        assert response.status_code == 503, response.text
        assert "not a readable safetensors file" in error_shaped_5xx(response)["message"]
        assert client.post("/predict", json={"model": "shapes", "images": [image]}).is_success
    assert not marker.exists()


def error_shaped_5xx(response: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert error["type"] == "server_error" and "Traceback" not in error["message"]
    return error


def test_nul_characters_in_ids_names_and_cursors_are_4xx(live_api: LiveApi) -> None:
    # PostgreSQL text cannot hold NUL; the slow fuzz found a 500 on a dataset id holding one.
    from tests.service.support import finetune_body

    with live_api.client() as client:
        responses = [
            client.post("/finetune", json=finetune_body("ds-\x00")),
            client.post("/finetune", json=finetune_body("ds-x", descriptions="set\x00")),
            client.get("/jobs/ftjob-%00"),
            client.get("/jobs", params={"after": "ftjob-\x00"}),
            client.get("/datasets/ds-%00"),
            client.get("/datasets", params={"after": "\x00"}),
            client.get("/descriptions/desc-%00"),
            client.get("/descriptions", params={"name": "a\x00"}),
            client.get("/models/a%00b"),
            client.get("/models/shapes/aliases/a%00"),
            client.post("/predict", json={"model": "sha\x00pes", "images": [b64(b"x")]}),
        ]
    for response in responses:
        error_shaped(response)
    record("nul_characters", requests=len(responses), server_errors=0)
