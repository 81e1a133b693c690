"""Helpers shared by the service, worker and end-to-end tests."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from models.config import RunConfig, from_dict
from models.pipeline import finetune
from service.app import create_app
from service.datasets import service as datasets
from service.db.engine import make_engine, make_sessionmaker
from service.db.migrate import upgrade
from service.jobs import service as jobs
from service.jobs.schemas import FineTuneRequest
from service.registry import service as registry
from service.settings import Settings
from service.storage import ArtifactStore
from worker.runner import WorkerContext

API_KEY = "rcs_test_bootstrap_key_0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def make_settings(tmp: Path, data_root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "production",
        "database_url": f"sqlite:///{tmp / 'rcs.db'}",
        "broker_url": "memory://",
        "artifacts_url": str(tmp / "artifacts"),
        "work_dir": tmp / "work",
        "allowed_dataset_roots": [data_root],
        "bootstrap_api_key": API_KEY,
        "device": "cpu",
        "checkpoint_every": 4,
        # Short, so the routes that wait out the lookup caches (service/lookups.py) answer fast;
        # tests/service/test_lookups.py checks the caches at their default too.
        "lookup_cache_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class FakeBroker:
    """Stands in for the Celery app in unit tests: records what would have been sent."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False

    def send_task(self, name: str, kwargs: dict[str, Any], **_: Any) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((name, kwargs))

    def connection_for_write(self) -> Any:
        return _FakeConnection(self.fail)

    def close(self) -> None:
        pass


@contextmanager
def open_app(settings: Settings, **options: Any) -> Iterator[TestClient]:
    """The app on ``settings``, started, with a ``FakeBroker``; ``options`` go to the
    ``TestClient`` (``headers``, ``follow_redirects``)."""
    with TestClient(create_app(settings), **options) as client:
        client.app.state.ctx.broker = FakeBroker()  # type: ignore[attr-defined]
        yield client


class _FakeConnection:
    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def __enter__(self) -> _FakeConnection:
        return self

    def __exit__(self, *_: Any) -> None:
        pass

    def ensure_connection(self, **_: Any) -> None:
        if self.fail:
            raise ConnectionError("broker down")


def png_bytes(color: tuple[int, int, int] = (200, 60, 60), size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def zeroshot_artifact(shapes_root: Path, out: Path) -> Path:
    """A real artifact of the tiny model without training (a second or two)."""
    cfg = from_dict(
        RunConfig,
        {
            "data": {
                "path": str(shapes_root),
                "descriptions": str(shapes_root / "descriptions.json"),
                "check_images": False,
            },
            "objective": {"name": "zeroshot"},
            "head": {"templates": "single"},
            "train": {"device": "cpu"},
            "output_dir": str(out),
        },
    )
    return finetune(cfg).artifact.path


def register_artifact(
    session: Session, store: ArtifactStore, name: str, folder: Path, job_id: str
) -> int:
    """Register ``folder`` as the next READY version of ``name``, as the worker does."""
    from models.artifacts import read_card

    version = registry.begin_version(session, name, job_id, read_card(folder))
    # The row's name, as the worker: ``M1`` registers under the stored ``m1``.
    source = store.put_folder(folder, registry.version_key(version.name, version.version))
    registry.mark_ready(session, version, source, registry.artifact_digest(folder))
    session.commit()
    return version.version


def finetune_body(dataset_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "test-tiny-vit",
        "dataset": dataset_id,
        "descriptions": {
            "circle": "a round shape",
            "square": ["four equal sides"],
            "triangle": "three sides",
            "cross": "two crossing bars",
        },
        "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate": 0.001},
        "wise_ft": {"alphas": [0.0, 0.5, 1.0]},
        "head": {"templates": "single"},
        "registered_model_name": "shapes",
        "seed": 0,
    }
    body.update(overrides)
    return body


def worker_context(settings: Settings, **timing: float) -> WorkerContext:
    """A migrated database and an in-process worker on ``settings``; the lease is renewed (and
    cancellation seen) at every check unless ``timing`` sets it."""
    upgrade(settings.database_url)
    return WorkerContext(
        settings=settings,
        sessions=make_sessionmaker(make_engine(settings.database_url)),
        store=ArtifactStore.of(settings),
        **{"renew_every_s": 0.0, **timing},
    )


def dataset_name(stem: str = "shapes") -> str:
    """A name no other live dataset has: two may not share one."""
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def new_job(ctx: WorkerContext, shapes_root: Path, **overrides: Any) -> str:
    """A queued job on the shapes dataset (registered anew), as ``POST /finetune`` makes it."""
    with ctx.sessions() as session:
        dataset = datasets.register_path(
            session, ctx.settings, "key-test", dataset_name(), str(shapes_root)
        )
        body = FineTuneRequest.model_validate(finetune_body(dataset.id, **overrides))
        job, _ = jobs.create(session, ctx.settings, body, lambda _: None, "test", None)
        return job.id
