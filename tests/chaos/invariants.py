"""What the chaos run asserts about each job, as pure functions of what the API reports and what
the killer saw, so they can be tested on made-up histories (tests/chaos/test_invariants.py).

"No step trained twice", exactly: a job's events are split into attempts by their "Job started
on HOST:PID:... (attempt N)" event; the first metrics event of every attempt is always written
(the observer starts with no recent event), so an attempt that trained began at its first
step. Each attempt after the first must follow a SIGKILL of the previous attempt's worker, and
must begin at the step after the checkpoint that was on disk once that worker was dead (what
``models.train.latest_checkpoint`` returns). So every step whose update was kept is applied
exactly once: steps 1..c of the killed attempt live on in its checkpoint c, and the work after c
died with the worker and is done again (``steps_redone``). A kill may lose at most
``checkpoint_every`` steps: more means a checkpoint was reported but not durable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

STARTED = re.compile(r"Job started on (?P<owner>\S+) \(attempt (?P<attempt>\d+)\)")
COMPLETED = "The job has successfully completed"


@dataclass(frozen=True)
class Attempt:
    pid: int
    number: int
    steps: tuple[int, ...]  # the steps of its metrics events ("step", not "eval"), in order


@dataclass(frozen=True)
class Kill:
    worker: int
    pid: int
    job_id: str | None  # None: the worker was between jobs (claimed none, or just finished)
    checkpoint: int  # the job's latest checkpoint on disk once the worker was dead; 0: none


def owner_pid(owner: str) -> int:
    """The process id in a worker's owner name, ``host:pid:suffix``."""
    return int(owner.split(":")[1])


def attempts_of(events: Sequence[dict[str, Any]]) -> list[Attempt]:
    found: list[tuple[int, int, list[int]]] = []
    for event in events:
        started = STARTED.match(event["message"])
        if started is not None:
            found.append((owner_pid(started["owner"]), int(started["attempt"]), []))
        elif event["type"] == "metrics" and found:
            data = event.get("data") or {}
            if data.get("event", "step") == "step" and "step" in data:
                found[-1][2].append(int(data["step"]))
    return [Attempt(pid, number, tuple(steps)) for pid, number, steps in found]


def step_problems(
    job_id: str,
    attempts: Sequence[Attempt],
    kills: Sequence[Kill],
    total: int,
    checkpoint_every: int,
    trains: bool,
) -> list[str]:
    """Every way this job's history breaks "no step trained twice"; empty when it holds."""
    if not attempts:
        return [f"{job_id}: no 'Job started' event"]
    killed = {k.pid: k for k in kills if k.job_id == job_id}
    problems: list[str] = []
    resume = 0
    for i, attempt in enumerate(attempts):
        where = f"{job_id} attempt {attempt.number} (pid {attempt.pid})"
        if any(b <= a for a, b in zip(attempt.steps, attempt.steps[1:], strict=False)):
            problems.append(f"{where}: steps not increasing {list(attempt.steps)}")
        if not trains and attempt.steps:
            problems.append(f"{where}: a zero-shot job trained steps {list(attempt.steps)}")
        if i > 0:
            before = attempts[i - 1]
            kill = killed.get(before.pid)
            if kill is None:
                problems.append(
                    f"{where} began while attempt {before.number} (pid {before.pid}) was not "
                    "killed: two workers ran the job"
                )
                continue
            problems += _kill_problems(where, before, kill, resume, checkpoint_every)
            resume = kill.checkpoint
        if attempt.steps and attempt.steps[0] != resume + 1:
            problems.append(
                f"{where}: began at step {attempt.steps[0]}, the checkpoint on disk was step "
                f"{resume}" + (": steps trained twice" if attempt.steps[0] <= resume else "")
            )
    last = attempts[-1]
    final = last.steps[-1] if last.steps else resume
    if trains and final != total:
        problems.append(f"{job_id}: training ended at step {final} of {total}")
    return problems


def _kill_problems(
    where: str, before: Attempt, kill: Kill, resume: int, checkpoint_every: int
) -> list[str]:
    problems = []
    if kill.checkpoint < resume:
        problems.append(
            f"{where}: the checkpoint went back from step {resume} to {kill.checkpoint}"
        )
    reached = before.steps[-1] if before.steps else resume
    if reached - kill.checkpoint > checkpoint_every:
        problems.append(
            f"{where}: the killed attempt reached step {reached} but the checkpoint on disk was "
            f"step {kill.checkpoint} (every {checkpoint_every})"
        )
    return problems


def kill_phase(kill: Kill, attempts: Sequence[Attempt], total: int, trains: bool) -> str:
    """Where the killed attempt was, from its events: the first and the last training step
    always have one, so "trained no step yet" and "past the last step" are exact."""
    attempt = next((a for a in attempts if a.pid == kill.pid), None)
    if kill.job_id is None or attempt is None:
        return "between_jobs"  # idle, or claiming a job before its start event
    if not trains:
        return "zeroshot"
    if not attempt.steps:
        return "before_training"  # loading, zero-shot evaluation, or resuming
    return "after_training" if attempt.steps[-1] >= total else "training"


def steps_redone(attempts: Sequence[Attempt], kills: Sequence[Kill], job_id: str) -> int:
    """Steps a killed attempt was seen to train past its last checkpoint (done again after)."""
    killed = {k.pid: k for k in kills if k.job_id == job_id}
    return sum(
        max(0, a.steps[-1] - killed[a.pid].checkpoint)
        for a in attempts
        if a.pid in killed and a.steps
    )


def once_problems(
    job_id: str, name: str, state: dict[str, Any], events: Sequence[dict[str, Any]]
) -> list[str]:
    """Every way this job's record breaks "finished exactly once, succeeded, one version"."""
    messages = [e["message"] for e in events]
    problems = []
    if state["status"] != "succeeded":
        problems.append(f"{job_id}: {state['status']} {state.get('error')}")
    if state.get("fine_tuned_model") != f"{name}/1":
        problems.append(f"{job_id}: fine_tuned_model {state.get('fine_tuned_model')!r}")
    for text, expected in ((COMPLETED, 1), ("Registered ", 1), ("Job failed", 0)):
        count = sum(m.startswith(text) for m in messages)
        if count != expected:
            problems.append(f"{job_id}: {count} events '{text}...', expected {expected}")
    if "Training stopped" in messages:
        problems.append(f"{job_id}: 'Training stopped' (the job was taken from a live worker)")
    return problems
