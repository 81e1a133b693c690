"""Part 1 of the chaos run: the API and two workers on PostgreSQL and a Redis of our own
(append-only), jobs of every kind, ``CHAOS_KILLS`` SIGKILLs of a worker running a job at random
moments (each worker started again at once) and ``CHAOS_REDIS_RESTARTS`` Redis restarts spread
over the run, while a reader keeps reading and classifying.

At the end every job must have succeeded exactly once with one READY version that serves, no
step may have been trained twice (tests/chaos/invariants.py says exactly what is checked), and
the reader must have seen no 5xx. One deadline bounds the whole part (``CHAOS_DEADLINE_S``):
faults stop when only ``DRAIN_S`` of it is left, the jobs are still checked and the figures
recorded, and then the test fails naming how many faults it could inject.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.train import latest_checkpoint
from tests.chaos.conftest import STARTUP_S, Chaos, Deadline, progress
from tests.chaos.invariants import (
    STARTED,
    Attempt,
    Kill,
    attempts_of,
    kill_phase,
    once_problems,
    owner_pid,
    step_problems,
    steps_redone,
)
from tests.e2e.conftest import Stack
from tests.live import ok, postgres_database_or_skip, wait_for
from tests.reliability.conftest import fault_settings, prepare_database, record
from tests.reliability.images import encode, noise
from tests.reliability.jobs import TERMINAL, events, job, one_ready_version, submit
from tests.reliability.redis_server import RedisServer
from tests.service.support import AUTH, b64
from tools.processes import Process, api_process, free_port, wait_ready, worker_process

pytestmark = pytest.mark.chaos

KINDS = ("zeroshot", "ce", "flyp", "drm")
ACTIVE_JOBS = 3  # jobs kept queued or running, so both workers always have one to be killed in
# Faults stop when less than this is left of the deadline: time for the last jobs to finish on
# a loaded machine, where a restarted worker can take minutes to start.
DRAIN_S = 600.0
MID_TRAINING = 0.7  # the share of kills aimed at a random point of training
MID_TRAINING_WAIT_S = 120.0


class Cluster:
    """The API and two workers on ``settings``."""

    def __init__(self, settings: dict[str, str], workdir: Path, data: Path) -> None:
        self.settings, self.workdir, self.data = settings, workdir, data
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self.api = api_process(settings, port, workdir / "api.log").start()
        self.workers: list[Process] = []

    def start_all(self) -> None:
        # The machine is shared and loaded: starting can take minutes, not the usual 60 s.
        wait_ready(self.base_url, self.api, timeout=STARTUP_S)
        self.workers = [self._worker(i) for i in range(2)]

    def stop_all(self) -> None:
        for process in [*self.workers, self.api]:
            process.stop()

    @property
    def stack(self) -> Stack:
        """The end-to-end tests' view (its client and dataset helpers)."""
        return Stack(
            self.base_url, self.settings, self.api, self.workers[0], self.workdir, self.data
        )

    def _worker(self, index: int) -> Process:
        log = self.workdir / f"worker-{index}.log"
        return worker_process(self.settings, log, name=f"trainer{index}").start()

    def live_pids(self) -> dict[int, int]:
        """Worker index by process id, for the workers alive now."""
        return {w.popen.pid: i for i, w in enumerate(self.workers) if w.popen and w.alive()}

    def kill(self, index: int) -> int:
        """SIGKILL worker ``index``; its process id."""
        worker = self.workers[index]
        assert worker.popen is not None
        worker.kill()
        worker.stop()  # closes its log; the process is already gone
        return worker.popen.pid

    def start(self, index: int) -> None:
        self.workers[index] = self._worker(index)

    def checkpoint_on_disk(self, job_id: str) -> int:
        """The step a resumed attempt of ``job_id`` starts after (what the loop would load)."""
        folder = Path(self.settings["RCS_WORK_DIR"]) / "jobs" / job_id / "checkpoints"
        latest = latest_checkpoint(folder)
        return int(latest.name.removeprefix("step-")) if latest is not None else 0

    def logs(self) -> str:
        tails = [f"--- worker {i} ---\n{w.tail(60)}" for i, w in enumerate(self.workers)]
        return "\n".join([f"--- api ---\n{self.api.tail()}", *tails])


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    shapes_root: Path,
    reliability_artifact: Path,
    redis_server: RedisServer,
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("chaos-faults")
    database_url, drop = postgres_database_or_skip()
    settings = fault_settings(workdir, database_url, redis_server.url, shapes_root)
    prepare_database(settings, reliability_artifact)
    built = Cluster(settings, workdir, shapes_root)
    try:
        built.start_all()
        yield built
    finally:
        built.stop_all()
        drop()


class Reader(threading.Thread):
    """Reads jobs, events, checkpoints and models and classifies an image the whole run, as
    users would; counts statuses and keeps every 5xx and connection error."""

    def __init__(self, base_url: str, jobs: dict[str, str]) -> None:
        super().__init__(name="chaos-reader", daemon=True)
        self.base_url, self.jobs = base_url, jobs
        self.statuses: Counter[str] = Counter()
        self.errors: list[str] = []
        self.done = threading.Event()
        self.image = {"model": "shapes", "images": [b64(encode(noise(32), "PNG"))]}

    def request(self, i: int) -> tuple[str, str, dict[str, Any]]:
        job_id = random.choice(list(self.jobs) or ["ftjob-" + "0" * 24])
        requests: list[tuple[str, str, dict[str, Any]]] = [
            ("GET", "/jobs", {"params": {"limit": 20}}),
            ("GET", f"/jobs/{job_id}", {}),
            ("GET", f"/jobs/{job_id}/events", {"params": {"limit": 100}}),
            ("GET", f"/jobs/{job_id}/checkpoints", {}),
            ("GET", "/models", {}),
            ("POST", "/predict", {"json": self.image}),
        ]
        return requests[i % len(requests)]

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=AUTH, timeout=30) as client:
            i = 0
            while not self.done.wait(0.2):
                method, path, options = self.request(i)
                i += 1
                try:
                    response = client.request(method, path, **options)
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                    self.errors.append(f"{method} {path}: {exc!r}")
                    continue
                self.statuses[str(response.status_code)] += 1
                if response.status_code >= 500:
                    self.errors.append(
                        f"{method} {path} -> {response.status_code}: {response.text[:300]}"
                    )

    def stop(self) -> None:
        self.done.set()
        self.join(60)


def _advanced(
    state: dict[str, Any], advance: int | None, seen: dict[str, int], kinds: dict[str, str]
) -> bool:
    if advance is None:
        return True
    step, total = state["progress"]["step"], state["progress"]["total_steps"] or 0
    first = seen.setdefault(state["id"], step)
    return kinds[state["id"]] != "zeroshot" and first + advance <= step < total


def schedule(kills: int, restarts: int) -> list[str]:
    """Kills and Redis restarts, each kind spread evenly over the run."""
    timed = [((i + 0.5) / kills, "kill") for i in range(kills)]
    timed += [((j + 1) / (restarts + 1), "redis") for j in range(restarts)]
    return [what for _, what in sorted(timed)]


@dataclass
class ChaosRun:
    cluster: Cluster
    redis: RedisServer
    client: httpx.Client
    dataset: dict[str, Any]
    chaos: Chaos
    deadline: Deadline
    rng: random.Random
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> kind
    names: dict[str, str] = field(default_factory=dict)  # job id -> registered model name
    finished: set[str] = field(default_factory=set)
    kills: list[Kill] = field(default_factory=list)
    redis_down_s: list[float] = field(default_factory=list)

    def submit(self) -> None:
        kind = KINDS[len(self.jobs) % len(KINDS)]
        name = f"chaos-{kind}-{len(self.jobs):03d}"
        job_id = submit(self.client, self.dataset, name, self.chaos.steps, method={"type": kind})
        self.jobs[job_id], self.names[job_id] = kind, name

    def active(self) -> list[dict[str, Any]]:
        """Our jobs that have not finished, as the API reports them now."""
        states = []
        for job_id in self.jobs.keys() - self.finished:
            state = job(self.client, job_id)
            if state["status"] in TERMINAL:
                self.finished.add(job_id)
            else:
                states.append(state)
        return states

    def top_up(self) -> list[dict[str, Any]]:
        states = self.active()
        for _ in range(ACTIVE_JOBS - len(states)):
            self.submit()
        return states

    def busy_workers(self, advance: int | None, seen: dict[str, int]) -> list[tuple[int, str]]:
        """(worker index, job id) for each live worker running one of our jobs now; with
        ``advance``, only training jobs that trained that many steps since first ``seen``."""
        pids = self.cluster.live_pids()
        busy = []
        for state in self.top_up():
            if state["status"] != "running" or not _advanced(state, advance, seen, self.jobs):
                continue
            pid = self.last_owner(state["id"])
            if pid in pids:
                busy.append((pids[pid], state["id"]))
        return busy

    def target(self) -> tuple[int, str] | None:
        """A worker to kill and its job: most often one that trained a random number of steps
        more, so kills land all along training and jobs still get on; otherwise (or when no
        job gets there in time) any busy one: in setup, zero-shot evaluation, WiSE-FT or
        registration."""
        advance = None
        if self.rng.random() < MID_TRAINING:
            advance = self.rng.randint(1, max(1, self.chaos.steps // 4))
        give_up = time.monotonic() + MID_TRAINING_WAIT_S
        seen: dict[str, int] = {}  # job id -> its step when first looked at
        while True:
            busy = self.busy_workers(advance if time.monotonic() < give_up else None, seen)
            if busy:
                return self.rng.choice(busy)
            if self.deadline.left() < DRAIN_S:
                return None  # no time left for more faults
            time.sleep(0.25)

    def last_owner(self, job_id: str) -> int | None:
        starts = [m for e in events(self.client, job_id) if (m := STARTED.match(e["message"]))]
        return owner_pid(starts[-1]["owner"]) if starts else None

    def kill_one(self) -> None:
        time.sleep(self.rng.uniform(0.5, 4.0))  # a random moment of the running jobs
        target = self.target()
        if target is None:
            return
        index, guess = target
        pid = self.cluster.kill(index)
        victim = self.victim(pid, guess)
        self.kills.append(self.describe(index, pid, victim))
        self.cluster.start(index)

    def victim(self, pid: int, guess: str) -> str | None:
        """The job whose latest attempt was ``pid``'s (fixed now that ``pid`` is dead)."""
        for job_id in [guess, *sorted(self.jobs.keys() - self.finished - {guess})]:
            if self.last_owner(job_id) == pid:
                return job_id
        return None

    def describe(self, index: int, pid: int, job_id: str | None) -> Kill:
        checkpoint = self.cluster.checkpoint_on_disk(job_id) if job_id is not None else 0
        return Kill(index, pid, job_id, checkpoint)

    def restart_redis(self) -> None:
        self.redis.stop()
        down = self.rng.uniform(1.0, 4.0)  # the reader keeps reading meanwhile
        time.sleep(down)
        self.redis.start()
        self.redis_down_s.append(down)
        ready = lambda: self.client.get("/readyz").status_code == 200  # noqa: E731
        wait_for(ready, min(60, self.deadline.left()), "readiness after Redis came back")

    def inject_faults(self) -> None:
        """The kills and Redis restarts in their order, until done or until only ``DRAIN_S``
        of the deadline is left: then the jobs must still finish and be checked."""
        for what in schedule(self.chaos.kills, self.chaos.redis_restarts):
            if self.deadline.left() < DRAIN_S:
                progress(f"stopping the faults early, {self.deadline.left():.0f} s left")
                return
            self.kill_one() if what == "kill" else self.restart_redis()
            progress(
                f"{what}: {len(self.kills)} kills, {len(self.redis_down_s)} Redis restarts, "
                f"{len(self.jobs)} jobs ({len(self.finished)} finished)"
                + (f", last {self.kills[-1]}" if what == "kill" and self.kills else "")
            )

    def wait_until_all_finished(self) -> None:
        def all_finished() -> bool:
            return not self.active()

        wait_for(all_finished, self.deadline.left(), "every job to finish")


def test_kills_and_redis_restarts_lose_no_job_and_train_no_step_twice(
    cluster: Cluster, redis_server: RedisServer, chaos: Chaos
) -> None:
    started = time.monotonic()
    deadline = Deadline(chaos.fault_deadline_s, "the chaos fault part")
    progress(f"faults: {chaos}, deadline {deadline.seconds:.0f} s")
    dataset = cluster.stack.shapes_dataset()
    with cluster.stack.client() as client:
        run = ChaosRun(
            cluster, redis_server, client, dataset, chaos, deadline, random.Random(chaos.seed)
        )
        for _ in KINDS:  # one of each kind first; then kept topped up
            run.submit()
        reader = Reader(cluster.base_url, run.jobs)
        reader.start()
        try:
            run.inject_faults()
            run.wait_until_all_finished()
        except AssertionError:  # past the deadline: what ran is still worth knowing
            reader.stop()
            partial = figures(run, {}, {}, [], [])
            record("chaos_faults", complete=False, **partial, **reads(reader))
            raise
        finally:
            reader.stop()
        states = {j: job(client, j) for j in run.jobs}
        histories = {j: events(client, j) for j in run.jobs}
        attempts = {j: attempts_of(h) for j, h in histories.items()}
        versions = all_versions(client)
        problems = job_problems(run, states, histories, attempts)
        problems += version_problems(run, client, versions)
    record(
        "chaos_faults",
        complete=True,
        **figures(run, attempts, states, versions, problems),
        **reads(reader),
        seconds=round(time.monotonic() - started),
    )
    assert reader.errors == [], reader.errors[:20]
    assert problems == [], "\n".join(problems[:40]) + f"\n{cluster.logs()}"
    planned = (chaos.kills, chaos.redis_restarts)
    assert (len(run.kills), len(run.redis_down_s)) == planned, (
        f"only {len(run.kills)} kills and {len(run.redis_down_s)} Redis restarts of {planned} "
        f"before the deadline left {DRAIN_S:.0f} s to finish the jobs (CHAOS_DEADLINE_S)"
    )


def job_problems(
    run: ChaosRun,
    states: dict[str, dict[str, Any]],
    histories: dict[str, list[dict[str, Any]]],
    attempts: dict[str, list[Attempt]],
) -> list[str]:
    every = int(run.cluster.settings["RCS_CHECKPOINT_EVERY"])
    problems = []
    for job_id, kind in run.jobs.items():
        state = states[job_id]
        total = state["progress"]["total_steps"] or 0
        problems += once_problems(job_id, run.names[job_id], state, histories[job_id])
        trains = kind != "zeroshot"
        problems += step_problems(job_id, attempts[job_id], run.kills, total, every, trains)
    return problems


def version_problems(
    run: ChaosRun, client: httpx.Client, versions: list[dict[str, Any]]
) -> list[str]:
    """One READY version per job, none left PENDING or FAILED, each one serving."""
    problems = []
    for job_id, name in run.names.items():
        try:
            one_ready_version(client, name, job_id)
        except AssertionError as exc:
            problems.append(f"{job_id}: versions of {name}: {exc}")
    by_job = Counter(v["job_id"] for v in versions)
    problems += [f"{j}: {n} versions" for j, n in by_job.items() if n != 1]
    problems += [
        f"{v['name']}/{v['version']}: {v['status']}" for v in versions if v["status"] != "READY"
    ]
    image = {"images": [b64(encode(noise(32), "PNG"))]}
    for name in run.names.values():
        response = client.post("/predict", json={**image, "model": f"{name}/1"})
        if response.status_code != 200:
            problems.append(f"/predict {name}/1 -> {response.status_code}: {response.text[:200]}")
    return problems


def all_versions(client: httpx.Client) -> list[dict[str, Any]]:
    names: list[str] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = ok(client.get("/models", params=params))
        names += [m["name"] for m in page["data"]]
        if not page["has_more"] or not page["data"]:
            break
        params["after"] = names[-1]
    return [v for n in names for v in ok(client.get(f"/models/{n}/versions"))["data"]]


def phase(
    run: ChaosRun, kill: Kill, attempts: dict[str, list[Attempt]], states: dict[str, Any]
) -> str:
    if kill.job_id is None or kill.job_id not in states:
        return "between_jobs" if kill.job_id is None else "unknown"
    total = states[kill.job_id]["progress"]["total_steps"] or 0
    trains = run.jobs[kill.job_id] != "zeroshot"
    return kill_phase(kill, attempts[kill.job_id], total, trains)


def reads(reader: Reader) -> dict[str, Any]:
    return {
        "reads": reader.statuses.total(),
        "read_statuses": dict(reader.statuses),
        "server_errors": len(reader.errors),
    }


def figures(
    run: ChaosRun,
    attempts: dict[str, list[Attempt]],
    states: dict[str, dict[str, Any]],
    versions: list[dict[str, Any]],
    problems: list[str],
) -> dict[str, Any]:
    """What the run did and what it found (from the API's answers, not from the assertions)."""
    resumed = sum(a.steps[0] > 1 for history in attempts.values() for a in history if a.steps)
    ours = Counter(v["job_id"] for v in versions if v["job_id"] in run.jobs)
    return {
        "workers": 2,
        "jobs": len(run.jobs),
        "jobs_by_kind": dict(Counter(run.jobs.values())),
        "steps_per_job": run.chaos.steps,
        "kills": len(run.kills),
        "kills_by_phase": dict(Counter(phase(run, k, attempts, states) for k in run.kills)),
        "redis_restarts": len(run.redis_down_s),
        "redis_down_s": round(sum(run.redis_down_s), 1),
        "attempts": sum(len(history) for history in attempts.values()),
        "attempts_resumed_from_checkpoint": resumed,
        "steps_redone_after_kills": sum(steps_redone(a, run.kills, j) for j, a in attempts.items()),
        "succeeded": sum(s["status"] == "succeeded" for s in states.values()),
        "ready_versions": sum(v["status"] == "READY" for v in versions if v["job_id"] in ours),
        "jobs_with_other_than_one_version": sum(ours[j] != 1 for j in run.jobs) if states else None,
        "steps_trained_twice_findings": sum("trained twice" in p for p in problems),
        "problems": len(problems),
        "seed": run.chaos.seed,
    }
