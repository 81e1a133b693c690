"""Names that look the same are one name: NFC, no invisible or bidi characters, case and
lookalike letters folded for uniqueness and lookups (issue 22, item 11)."""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, text

from service.context import AppContext
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.registry import service as registry
from service.validation import clean_name, name_key
from tests.service.support import finetune_body, register_artifact
from tests.service.test_datasets import data_root, own_client  # noqa: F401 - fixtures
from tests.service.test_registry_integrity import postgres_url  # noqa: F401 - a fixture

CAFE_NFC = "caf\u00e9"
CAFE_NFD = "cafe\u0301"
ZWSP = "\u200b"
RLO = "\u202e"
CYRILLIC_S = "\u0455"  # CYRILLIC SMALL LETTER DZE, drawn as Latin "s"


def job_id() -> str:
    return f"ftjob-{uuid.uuid4().hex[:24]}"


def error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()["error"]
    return body


# --- the policy ------------------------------------------------------------------------------


def test_one_key_for_case_normalisation_and_lookalikes() -> None:
    assert name_key("m1") == name_key("M1")
    assert name_key(CAFE_NFC) == name_key(CAFE_NFD) == name_key("CAFÉ")
    assert name_key("shapes") == name_key(f"{CYRILLIC_S}hapes") == name_key("SHAPES")
    assert name_key("a\u00a0b") == name_key("a b")
    # Different names stay different: Greek that draws nothing Latin, Japanese, emoji.
    assert len({name_key(n) for n in ("Ω≈ç√", "日本語のクラス", "🐱 cat", "cat", "ca t")}) == 5


@pytest.mark.parametrize(
    ("name", "code_point"),
    [
        (f"shapes{RLO}", "U+202E"),
        (f"{CAFE_NFC}{ZWSP}", "U+200B"),
        ("a\x00b", "U+0000"),
        ("a\u2066b", "U+2066"),  # LEFT-TO-RIGHT ISOLATE
        ("a\ufeffb", "U+FEFF"),  # the byte-order mark
        ("\u3164x", "U+3164"),  # HANGUL FILLER: a letter that draws nothing
        ("a\u200db", "U+200D"),  # a joiner between letters draws nothing
    ],
)
def test_invisible_and_bidi_characters_are_refused(name: str, code_point: str) -> None:
    with pytest.raises(ValueError, match=re.escape(code_point)):
        clean_name(name)


def test_names_are_stored_in_nfc_and_emoji_sequences_are_kept() -> None:
    assert clean_name(CAFE_NFD) == CAFE_NFC
    assert clean_name("  shapes ") == "shapes"
    scientist = "\U0001f469\u200d\U0001f52c"  # woman + ZWJ + microscope: one glyph
    assert clean_name(scientist) == scientist


# --- models and aliases ----------------------------------------------------------------------


def test_m1_and_M1_are_one_model_stored_as_first_registered(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        assert register_artifact(session, ctx.store, "m1", artifact_folder, job_id()) == 1
        assert register_artifact(session, ctx.store, "M1", artifact_folder, job_id()) == 2
    assert [m["name"] for m in client.get("/models").json()["data"]] == ["m1"]
    model = client.get("/models/M1").json()
    assert model["name"] == "m1" and [v["version"] for v in model["latest_versions"]] == [2, 1]
    assert client.get("/models/M1/versions/2").json()["name"] == "m1"
    # Artifacts live under the stored spelling: no "M1" folder a case-insensitive store mixes up.
    root = Path(ctx.settings.artifacts_url)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["m1"]
    with ctx.sessions() as session:
        assert registry.resolve(session, "models:/M1/2").name == "m1"


def test_importing_M1_adds_a_version_to_m1(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        register_artifact(session, ctx.store, "m1", artifact_folder, job_id())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(artifact_folder.iterdir()):
            archive.add(path, f"model/{path.name}")
    files = {"file": ("m.tgz", buffer.getvalue())}
    imported = client.post("/models/M1/versions", files=files)
    assert imported.status_code == 201, imported.text
    assert (imported.json()["name"], imported.json()["version"]) == ("m1", 2)
    assert (Path(ctx.settings.artifacts_url) / "m1" / "v2").is_dir()
    assert not (Path(ctx.settings.artifacts_url) / "M1").exists()


def test_champ_and_Champ_are_one_alias(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    with ctx.sessions() as session:
        for _ in range(2):
            register_artifact(session, ctx.store, "m1", artifact_folder, job_id())
    assert client.put("/models/m1/aliases/champ", json={"version": 1}).json()["alias"] == "champ"
    moved = client.put("/models/M1/aliases/Champ", json={"version": 2})
    assert moved.status_code == 200, moved.text
    assert (moved.json()["name"], moved.json()["alias"], moved.json()["version"]) == (
        "m1",
        "champ",
        2,
    )
    assert client.get("/models/m1").json()["aliases"] == {"champ": 2}
    assert client.get("/models/M1/aliases/CHAMP").json()["version"] == 2
    with ctx.sessions() as session:
        assert registry.resolve(session, "M1@CHAMP").version == 2
    assert client.delete("/models/M1/aliases/cHaMp").status_code == 204
    assert client.get("/models/m1").json()["aliases"] == {}


def test_a_job_for_M1_is_accepted_and_a_bidi_model_name_is_422(
    client: TestClient, dataset: dict[str, Any]
) -> None:
    accepted = client.post(
        "/finetune", json=finetune_body(dataset["id"], registered_model_name="M1")
    )
    assert accepted.status_code == 200, accepted.text
    body = finetune_body(dataset["id"], registered_model_name=f"m1{RLO}")
    refused = error(client.post("/finetune", json=body), 422)
    assert refused["param"] == "registered_model_name" and "U+202E" in refused["message"]


# --- description sets and their classes -------------------------------------------------------


def test_shapes_and_Shapes_are_one_description_set(client: TestClient) -> None:
    first = client.post("/descriptions", json={"name": "shapes", "descriptions": {"a": "x"}})
    second = client.post("/descriptions", json={"name": "Shapes", "descriptions": {"a": "y"}})
    assert first.status_code == second.status_code == 200, second.text
    assert (second.json()["name"], second.json()["version"]) == ("shapes", 2)
    listed = client.get("/descriptions", params={"name": "SHAPES"}).json()["data"]
    assert [(s["name"], s["version"]) for s in listed] == [("shapes", 2), ("shapes", 1)]
    from service.descriptions import service as description_sets

    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    with ctx.sessions() as session:
        assert description_sets.resolve(session, "SHAPES/1", None).id == first.json()["id"]


@pytest.mark.parametrize(
    ("classes", "named"),
    [
        ({CAFE_NFC: "x", CAFE_NFD: "y"}, [r"caf\xe9", r"cafe\u0301"]),
        ({"Cat": "x", "cat": "y"}, ["'Cat'", "'cat'"]),
        ({"shapes": "x", f"{CYRILLIC_S}hapes": "y"}, ["'shapes'", r"\u0455hapes"]),
        ({f"{CAFE_NFC}{ZWSP}": "x"}, ["U+200B"]),
        ({"a": f"{RLO}{ZWSP}"}, ["U+202E"]),  # in a description's text
    ],
)
def test_colliding_or_invisible_class_names_are_422_naming_them(
    client: TestClient, classes: dict[str, str], named: list[str]
) -> None:
    body = {"name": "odd", "descriptions": classes}
    refused = error(client.post("/descriptions", json=body), 422)
    assert refused["param"] == "descriptions"
    for part in named:
        assert part in refused["message"], refused["message"]


def test_a_decomposed_class_name_is_stored_composed(client: TestClient) -> None:
    body = {"name": "odd", "descriptions": {CAFE_NFD: "a " + CAFE_NFD}}
    stored = client.post("/descriptions", json=body).json()
    assert stored["classes"] == [CAFE_NFC] and stored["descriptions"] == {CAFE_NFC: ["a café"]}


# --- datasets ----------------------------------------------------------------------------------


def test_a_second_live_dataset_of_the_same_name_is_409_naming_the_first(
    client: TestClient, dataset: dict[str, Any], shapes_root: Path
) -> None:
    for name in ("shapes", "Shapes", f"{CYRILLIC_S}hapes", " SHAPES "):
        body = {"name": name, "path": str(shapes_root)}
        refused = error(client.post("/datasets", json=body), 409)
        assert refused["param"] == "name" and dataset["id"] in refused["message"]
    assert [d["id"] for d in client.get("/datasets").json()["data"]] == [dataset["id"]]
    # A deleted dataset's name is free again.
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    again = client.post("/datasets", json={"name": "Shapes", "path": str(shapes_root)})
    assert again.status_code == 200, again.text


def test_an_upload_under_a_taken_name_is_409_and_leaves_no_files(
    client: TestClient, ctx: AppContext, dataset: dict[str, Any], shapes_root: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(shapes_root, "set")
    files = {"file": ("s.tgz", buffer.getvalue())}
    refused = client.post("/datasets/upload", data={"name": "SHAPES"}, files=files)
    assert dataset["id"] in error(refused, 409)["message"]
    uploads = ctx.settings.uploads_dir
    assert not uploads.exists() or list(uploads.iterdir()) == []
    bidi = client.post("/datasets/upload", data={"name": f"x{RLO}"}, files=files)
    assert "U+202E" in error(bidi, 422)["message"]


def test_a_dataset_name_with_an_rtl_override_is_422(client: TestClient, shapes_root: Path) -> None:
    body = {"name": f"shapes{RLO}gnp.exe", "path": str(shapes_root)}
    refused = error(client.post("/datasets", json=body), 422)
    assert refused["param"] == "name" and "U+202E" in refused["message"]


@pytest.mark.parametrize(
    ("folders", "named"),
    [
        ([CAFE_NFC, CAFE_NFD], [r"caf\xe9", r"cafe\u0301"]),
        (["Cat", "cat"], ["'Cat'", "'cat'"]),
        ([CAFE_NFC + ZWSP, "dog"], ["U+200B"]),
        ([CAFE_NFD, "dog"], ["NFC", r"cafe\u0301"]),
    ],
)
def test_dataset_class_folders_that_are_one_name_or_invisible_are_422(
    own_client: TestClient,  # noqa: F811
    data_root: Path,  # noqa: F811
    shapes_root: Path,
    folders: list[str],
    named: list[str],
) -> None:
    for name in folders:
        shutil.copytree(shapes_root / "train" / "circle", data_root / "set" / "train" / name)
    body = {"name": "odd", "path": str(data_root / "set")}
    refused = error(own_client.post("/datasets", json=body), 422)
    assert refused["param"] == "path"
    for part in named:
        assert part in refused["message"], refused["message"]


# --- the migration on a database that already holds colliding names ---------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database at revision 0003, before names were folded."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    upgrade(url, "0003")
    return url


def _insert(url: str, statements: list[str]) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    engine.dispose()


def _model(name: str) -> str:
    return f"INSERT INTO registered_models VALUES ('{name}', '', '{{}}', 0, 0, 1)"


def _dataset(dataset_id: str, name: str, created_at: int, deleted_at: str = "NULL") -> str:
    return (
        "INSERT INTO datasets (id, name, source, path, classes, counts, fingerprint, "
        "num_images, created_at, deleted_at) VALUES "
        f"('{dataset_id}', '{name}', 'path', '/d', '[]', '{{}}', 'f', 1, {created_at}, "
        f"{deleted_at})"
    )


def _revision(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
        columns = {c["name"] for c in inspect(conn).get_columns("registered_models")}
    engine.dispose()
    return found + (" keyed" if "name_key" in columns else "")


def test_the_migration_refuses_colliding_names_naming_them_and_changes_nothing(
    old_database: str,
) -> None:
    _insert(
        old_database,
        [
            _model("m1"),
            _model("M1"),
            _model("a"),
            "INSERT INTO model_aliases VALUES ('a', 'champ', 1, 0), ('a', 'Champ', 1, 0)",
            "INSERT INTO description_sets VALUES ('desc-1', 'shapes', 1, '{}', 0), "
            "('desc-2', 'Shapes', 1, '{}', 0)",
        ],
    )
    with pytest.raises(Exception, match="migration 0004") as refused:
        upgrade(old_database)
    for named in ("'M1', 'm1'", "'Champ', 'champ' of model 'a'", "'Shapes', 'shapes'"):
        assert named in str(refused.value)
    assert _revision(old_database) == "0003"
    # The operator keeps one of each; the upgrade then goes through.
    _insert(
        old_database,
        [
            "DELETE FROM registered_models WHERE name = 'M1'",
            "DELETE FROM model_aliases WHERE alias = 'Champ'",
            "DELETE FROM description_sets WHERE name = 'Shapes'",
        ],
    )
    upgrade(old_database, "0004")
    assert _revision(old_database) == "0004 keyed"
    upgrade(old_database)  # and on to the newest, which the session below expects
    engine = make_engine(old_database)
    with make_sessionmaker(engine)() as session:
        row = registry.begin_version(session, "M1", job_id(), {})
        assert (row.name, row.version) == ("m1", 2)
        assert registry.find_alias(session, "a", "CHAMP") is not None
    engine.dispose()


def test_the_migration_renames_later_live_datasets_of_a_taken_name(old_database: str) -> None:
    _insert(
        old_database,
        [
            _dataset("ds-1", "shapes", 1),
            _dataset("ds-2", "Shapes", 2),
            _dataset("ds-3", "shapes", 3, deleted_at="5"),
            _dataset("ds-4", f"{CYRILLIC_S}hapes", 4),
            _dataset("ds-5", "other", 5),
        ],
    )
    upgrade(old_database)
    engine = create_engine(old_database)
    with engine.connect() as conn:
        names = dict(conn.execute(text("SELECT id, name FROM datasets")).all())  # type: ignore[arg-type]
    engine.dispose()
    assert names == {
        "ds-1": "shapes",
        "ds-2": "Shapes (ds-2)",
        "ds-3": "shapes",  # deleted: its name is nobody's
        "ds-4": f"{CYRILLIC_S}hapes (ds-4)",
        "ds-5": "other",
    }
