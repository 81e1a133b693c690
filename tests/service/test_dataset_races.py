"""Issue 22 (3): ``POST /finetune`` or ``POST /evaluations`` racing ``DELETE /datasets/{id}``.

The delete used to look for users with a SELECT and then commit, with no lock: of 19 races, 18
had both succeed, and a job trained on a dataset already marked deleted while an upload's files
were removed under it. Now exactly one of the two wins, on SQLite and on PostgreSQL: the delete
(and the create 422s on ``dataset``) or the create (and the delete 409s naming it), and files go
only when no job or evaluation uses them.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from models.data import open_dataset
from service.datasets import service as datasets
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.db.tables import Dataset, Evaluation, Job, new_id
from service.errors import Conflict, InvalidRequest
from service.evaluations import service as evaluations
from service.evaluations.schemas import EvaluationRequest
from service.jobs import service as jobs
from service.jobs.schemas import FineTuneRequest
from service.settings import Settings
from service.storage import ArtifactStore
from tests.service.support import finetune_body, make_settings, register_artifact

# Races per kind (job, evaluation) and database.
RACES = 25


class World:
    """A migrated database with one registered dataset (the template of the raced ones) and a
    READY version of the shapes model."""

    def __init__(self, settings: Settings, artifact: Path) -> None:
        self.settings = settings
        upgrade(settings.database_url)
        self.engine = make_engine(settings.database_url)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        root = str(settings.allowed_dataset_roots[0])
        store = ArtifactStore.of(settings)
        with self.sessions() as session:
            self.template = datasets.register_path(session, settings, "key-race", "shapes", root)
            register_artifact(session, store, "shapes", artifact, "ftjob-" + "0" * 24)

    def upload(self) -> tuple[str, Path]:
        """A dataset as an upload leaves it: its row and a folder under the uploads folder
        that ``DELETE`` removes."""
        dataset_id = new_id("ds")
        folder = self.settings.uploads_dir / dataset_id
        path = folder / "shapes"
        shutil.copytree(self.template.path, path)
        origin = datasets.Origin("upload", "key-race", 1)
        with self.sessions() as session:
            datasets.save(session, dataset_id, dataset_id, origin, path, open_dataset(path))
        return dataset_id, folder


@pytest.fixture(params=["sqlite", "postgresql"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, shapes_root: Path, artifact_folder: Path
) -> Iterator[World]:
    drop: Callable[[], None] = lambda: None  # noqa: E731
    url = f"sqlite:///{tmp_path / 'rcs.db'}"
    if request.param == "postgresql":
        from tests.live import postgres_database_or_skip

        url, drop = postgres_database_or_skip()
    made = World(make_settings(tmp_path, shapes_root, database_url=url), artifact_folder)
    try:
        yield made
    finally:
        made.engine.dispose()
        drop()


def create_job(world: World, session: Session, dataset_id: str) -> None:
    body = FineTuneRequest.model_validate(finetune_body(dataset_id))
    jobs.create(session, world.settings, body, lambda _: None, "race", None)


def create_evaluation(world: World, session: Session, dataset_id: str) -> None:
    body = EvaluationRequest(model="shapes/1", dataset=dataset_id)
    evaluations.create(session, body, lambda _: None, "race", None)


def outcome(action: Callable[[], None]) -> str:
    try:
        action()
    except Conflict:
        return "409"
    except InvalidRequest as exc:
        assert exc.param == "dataset", exc
        return "422"
    return "ok"


def race(world: World, create: Callable[[World, Session, str], None]) -> tuple[str, str]:
    """One create and one delete of a fresh upload, released together; their answers, after
    checking what each answer promises."""
    dataset_id, folder = world.upload()
    start = threading.Barrier(2)
    # A few hundred microseconds either way, so the races cover both orders and the overlap.
    lag = random.uniform(0, 0.004)

    def creating() -> str:
        with world.sessions() as session:
            start.wait()
            return outcome(lambda: create(world, session, dataset_id))

    def deleting() -> str:
        with world.sessions() as session:
            start.wait()
            time.sleep(lag)
            return outcome(lambda: datasets.delete(session, world.settings, dataset_id))

    with ThreadPoolExecutor(2) as pool:
        created, deleted = pool.submit(creating), pool.submit(deleting)
        answers = created.result(timeout=60), deleted.result(timeout=60)
    with world.sessions() as session:
        row = session.get(Dataset, dataset_id)
        assert row is not None
        users = sum(
            session.scalar(select(func.count()).where(table.dataset_id == dataset_id)) or 0
            for table in (Job, Evaluation)
        )
    assert answers in {("ok", "409"), ("422", "ok")}, answers
    if answers[0] == "ok":  # the create won: the dataset and its files stay for it
        assert row.deleted_at is None and users == 1 and folder.is_dir()
    else:  # the delete won: nothing uses the dataset, and its files are gone
        assert row.deleted_at is not None and users == 0 and not folder.exists()
    return answers


@pytest.mark.parametrize("create", [create_job, create_evaluation], ids=["job", "evaluation"])
def test_create_racing_delete_has_exactly_one_winner(
    world: World, create: Callable[[World, Session, str], None]
) -> None:
    seen = Counter(race(world, create) for _ in range(RACES))
    print(f"{world.engine.dialect.name} {create.__name__}: {dict(seen)}")
    assert sum(seen.values()) == RACES


def test_a_create_after_the_delete_is_422_and_a_delete_after_the_create_409(
    world: World,
) -> None:
    """The two orders without a race, on both databases: what each loser answers."""
    first, _ = world.upload()
    with world.sessions() as session:
        datasets.delete(session, world.settings, first)
        with pytest.raises(InvalidRequest, match="was deleted|no dataset"):
            create_job(world, session, first)
    second, folder = world.upload()
    with world.sessions() as session:
        create_evaluation(world, session, second)
        with pytest.raises(Conflict, match="used by evaluation"):
            datasets.delete(session, world.settings, second)
    assert folder.is_dir()
