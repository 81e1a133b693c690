"""Registry integrity: version numbers are never reused, two API processes never serve bytes the
registry no longer lists, alias names are checked, the counter survives the migration."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from models.artifacts import read_card
from service.context import AppContext
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.db.tables import ModelVersion, RegisteredModel
from service.registry import service as registry
from service.status import VersionStatus
from tests.service.support import b64, png_bytes, register_artifact


def register(ctx: AppContext, folder: Path, name: str = "m") -> int:
    with ctx.sessions() as session:
        return register_artifact(session, ctx.store, name, folder, f"ftjob-{uuid.uuid4().hex[:24]}")


def test_version_numbers_are_never_reused(
    client: TestClient, ctx: AppContext, artifact_folder: Path
) -> None:
    assert [register(ctx, artifact_folder) for _ in range(3)] == [1, 2, 3]
    assert client.delete("/models/m/versions/3").status_code == 204
    assert register(ctx, artifact_folder) == 4
    for version in (1, 2, 4):
        assert client.delete(f"/models/m/versions/{version}").status_code == 204
    assert client.get("/models/m").json()["latest_versions"] == []
    # Every version deleted: the model keeps its count, so the next one is still higher.
    assert register(ctx, artifact_folder) == 5
    card = client.get("/models/m/versions/5").json()
    assert card["digest"] == registry.artifact_digest(artifact_folder)
    assert client.get("/models/m/versions/3").status_code == 404


def concurrent_registrations(url: str, folder: Path, store_root: Path, n: int) -> list[int]:
    from service.storage import ArtifactStore

    upgrade(url)
    sessions = make_sessionmaker(make_engine(url))
    store = ArtifactStore(str(store_root), store_root / "cache")
    start = threading.Barrier(n)
    numbers: list[int] = []

    def one(i: int) -> None:
        with sessions() as session:
            start.wait()
            row = registry.begin_version(session, "m", f"ftjob-{i:024x}", read_card(folder))
            registry.mark_ready(session, row, store.uri("x"), registry.artifact_digest(folder))
            session.commit()
            numbers.append(row.version)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(numbers)


def test_concurrent_registrations_get_distinct_numbers_on_sqlite(
    tmp_path: Path, artifact_folder: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert concurrent_registrations(url, artifact_folder, tmp_path / "a", 8) == list(range(1, 9))


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A database of its own on the local PostgreSQL (other tests use ``test``)."""
    admin = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    name = f"rcs_registry_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach it means no server here
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


def test_concurrent_registrations_get_distinct_numbers_on_postgresql(
    postgres_url: str, tmp_path: Path, artifact_folder: Path
) -> None:
    numbers = concurrent_registrations(postgres_url, artifact_folder, tmp_path / "a", 8)
    assert numbers == list(range(1, 9))


def test_the_migration_starts_the_counter_at_the_highest_version(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO registered_models VALUES ('a', '', '{}', 0, 0), ('b', '', '{}', 0, 0)"
            )
        )
        for version in (1, 2, 5):  # 3 and 4 were deleted before the upgrade
            conn.execute(
                text(
                    "INSERT INTO model_versions (name, version, status, source, tags, "
                    "description, card, created_at, updated_at) "
                    "VALUES ('a', :v, 'READY', '', '{}', '', '{}', 0, 0)"
                ),
                {"v": version},
            )
    upgrade(url)
    with make_sessionmaker(make_engine(url))() as session:
        counts = {r.name: r.last_version for r in session.scalars(select(RegisteredModel))}
        assert counts == {"a": 5, "b": 0}
        row = registry.begin_version(session, "a", "ftjob-" + "1" * 24, {})
        assert row.version == 6


# --- two API processes over one database and one artifact store ---


def relabelled(artifact_folder: Path, out: Path) -> Path:
    """The same weights with the class names reversed: other bytes, other answers."""
    shutil.copytree(artifact_folder, out)
    card = json.loads((out / "artifact.json").read_text())
    card["classnames"] = card["classnames"][::-1]
    (out / "artifact.json").write_text(json.dumps(card))
    return out


def top_label(client: TestClient, ref: str) -> str:
    response = client.post("/predict", json={"model": ref, "images": [b64(png_bytes())]})
    assert response.status_code == 200, response.text
    label: str = response.json()["data"][0]["labels"][0]["label"]
    return label


def test_a_second_process_never_serves_a_deleted_version(
    client: TestClient,
    second_client: TestClient,
    ctx: AppContext,
    artifact_folder: Path,
    tmp_path: Path,
) -> None:
    assert [register(ctx, artifact_folder, "shapes") for _ in range(2)] == [1, 2]
    before = top_label(second_client, "shapes/2")  # process B loads and caches shapes/2
    assert client.delete("/models/shapes/versions/2").status_code == 204  # process A deletes it
    gone = second_client.post("/predict", json={"model": "shapes/2", "images": [b64(png_bytes())]})
    assert gone.status_code == 404
    assert register(ctx, artifact_folder, "shapes") == 3  # the number is not given again

    # A row under the old number with other bytes (written behind the counter's back, as the
    # registry did before numbers were counted, or by a restored backup): B loads it afresh.
    other = relabelled(artifact_folder, tmp_path / "relabelled")
    with ctx.sessions() as session:
        session.add(
            ModelVersion(
                name="shapes",
                version=2,
                status=VersionStatus.READY,
                source=ctx.store.put_folder(other, registry.version_key("shapes", 2)),
                digest=registry.artifact_digest(other),
                card=read_card(other),
                tags={},
                description="",
            )
        )
        session.commit()
    after = top_label(second_client, "shapes/2")
    names = read_card(artifact_folder)["classnames"]
    assert after == names[::-1][names.index(before)] != before


def test_the_cache_keys_by_the_artifact_not_the_number(artifact_folder: Path) -> None:
    from service.predict.cache import ModelCache

    cache = ModelCache(max_bytes=1 << 40)
    first = cache.get("m", 1, lambda: artifact_folder, "1:aaa")
    assert cache.get("m", 1, lambda: Path("/nonexistent"), "1:aaa") is first
    assert cache.get("m", 1, lambda: artifact_folder, "7:bbb") is not first
    assert cache.keys() == [("m", 1), ("m", 1)]
    cache.evict("m", 1)
    assert cache.keys() == []


# --- alias names ---


@pytest.fixture
def version(ctx: AppContext, artifact_folder: Path) -> int:
    return register(ctx, artifact_folder, "shapes")


@pytest.mark.parametrize(
    "alias",
    ["champ\x00ion", "champ\x1fion", "champion\x7f", "champion\n", "\tchampion", "a b", "é"]
    + ["latest", "LATEST", "Latest", "V3", "v12", "v0"],
)
def test_bad_and_reserved_aliases_are_refused(client: TestClient, version: int, alias: str) -> None:
    from urllib.parse import quote

    response = client.put(f"/models/shapes/aliases/{quote(alias, safe='')}", json={"version": 1})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "alias"
    assert client.get("/models/shapes").json()["aliases"] == {}


@pytest.mark.parametrize("alias", ["champion", "v-next", "version2", "vNext", "latest-good", "V"])
def test_ordinary_aliases_are_accepted(client: TestClient, version: int, alias: str) -> None:
    response = client.put(f"/models/shapes/aliases/{alias}", json={"version": 1})
    assert response.status_code == 200, response.text
    assert client.get("/models/shapes").json()["aliases"] == {alias: 1}


def test_a_cached_download_of_other_bytes_is_fetched_again(
    tmp_path: Path, artifact_folder: Path
) -> None:
    """A process's download cache (object stores) is checked against the registry's digest."""
    from service.storage import ArtifactStore, card_digest

    store = ArtifactStore(f"memory://{uuid.uuid4().hex}", tmp_path / "cache")
    store.put_folder(artifact_folder, "m/v1")
    old = card_digest(artifact_folder)
    assert card_digest(store.local_path("m/v1", old)) == old  # downloaded and cached
    other = relabelled(artifact_folder, tmp_path / "relabelled")
    store.put_folder(other, "m/v1")  # other bytes under the same key, by another process
    new = card_digest(other)
    assert new != old and card_digest(store.local_path("m/v1", new)) == new
