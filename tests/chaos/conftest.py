"""The chaos run (`make chaos`): the reliability tests' faults, fuzzing and load at a length
too long for CI. Skipped unless ``RCS_CHAOS=1``, so ``make test`` and ``make test-fast`` never
run it. Its sizes come from the environment, the issue's numbers by default; small values give
a smoke run in a few minutes:

    CHAOS_KILLS=3 CHAOS_REDIS_RESTARTS=1 CHAOS_FUZZ_REQUESTS=300 CHAOS_LOAD_SECONDS=30 make chaos

Also: ``CHAOS_CLIENTS`` (64), ``CHAOS_STEPS`` (steps per training job, 40), ``CHAOS_SEED`` (to
repeat a run's random choices; recorded with its figures), ``CHAOS_DEADLINE_S`` (the fault
part's limit) and ``CHAOS_PROGRESS`` (a log of what the run has done so far).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.reliability.conftest import (
    LiveApi,
    redis_server,
    reliability_artifact,
    running_live_api,
)

__all__ = ["redis_server", "reliability_artifact"]  # the reliability tests' fixtures, used here too

ENABLED = os.environ.get("RCS_CHAOS") == "1"
# Starting a process on the shared, loaded machine can take minutes, not the usual 60 s.
STARTUP_S = 300.0
PROGRESS = Path(os.environ.get("CHAOS_PROGRESS", "runs/reliability/chaos-progress.log"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="the chaos run is on demand: `make chaos` (RCS_CHAOS=1)")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise pytest.UsageError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise pytest.UsageError(f"{name}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class Chaos:
    """The run's sizes (the issue's numbers by default) and its random seed."""

    kills: int = 50
    redis_restarts: int = 10
    fuzz_requests: int = 10_000
    load_seconds: float = 600.0
    clients: int = 64
    steps: int = 40  # per training job: long enough that kills land mid-training
    deadline_s: float = 0.0  # the fault part's limit; 0: from the number of faults
    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(2**31))

    @classmethod
    def from_env(cls) -> Chaos:
        base = cls()
        return cls(
            kills=int(_number("CHAOS_KILLS", base.kills)),
            redis_restarts=int(_number("CHAOS_REDIS_RESTARTS", base.redis_restarts)),
            fuzz_requests=int(_number("CHAOS_FUZZ_REQUESTS", base.fuzz_requests)),
            load_seconds=_number("CHAOS_LOAD_SECONDS", base.load_seconds),
            clients=max(1, int(_number("CHAOS_CLIENTS", base.clients))),
            steps=max(4, int(_number("CHAOS_STEPS", base.steps))),
            deadline_s=_number("CHAOS_DEADLINE_S", base.deadline_s),
            seed=int(_number("CHAOS_SEED", base.seed)),
        )

    @property
    def fault_deadline_s(self) -> float:
        # A kill costs 15 s to 2 min on 2 shared cores (most of it a worker starting again,
        # slower the busier the machine), and the last jobs need up to 10 minutes to finish.
        return self.deadline_s or 900 + 90 * self.kills + 60 * self.redis_restarts


@pytest.fixture(scope="session")
def chaos() -> Chaos:
    return Chaos.from_env()


@pytest.fixture(scope="module")
def chaos_api(
    tmp_path_factory: pytest.TempPathFactory, shapes_root: Path, reliability_artifact: Path
) -> Iterator[LiveApi]:
    """A live API of each part's own (uvicorn, PostgreSQL, the tiny model as ``shapes/1``), so
    one part's requests leave nothing in the memory another part measures."""
    workdir = tmp_path_factory.mktemp("chaos-api")
    with running_live_api(workdir, shapes_root, reliability_artifact, STARTUP_S) as api:
        yield api


def progress(message: str) -> None:
    """A timestamped line in ``CHAOS_PROGRESS`` (next to the figures): a long run can be
    followed, and what it did is known even if it is stopped."""
    PROGRESS.parent.mkdir(parents=True, exist_ok=True)
    with PROGRESS.open("a", encoding="utf-8") as fh:
        fh.write(f"{time.strftime('%H:%M:%S')} {message}\n")


class Deadline:
    """One limit for a whole part of the run: waiting past it fails the test, never hangs it."""

    def __init__(self, seconds: float, what: str) -> None:
        self.ends, self.seconds, self.what = time.monotonic() + seconds, seconds, what

    def left(self) -> float:
        left = self.ends - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{self.what}: over its {self.seconds:.0f} s deadline")
        return left
