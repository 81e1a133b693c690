"""The chaos run's checks on made-up histories: each one passes a good history and catches the
fault it is there for. Fast, and run by `make test` (the chaos run itself is not)."""

from __future__ import annotations

from typing import Any

from tests.chaos.invariants import (
    COMPLETED,
    Attempt,
    Kill,
    attempts_of,
    kill_phase,
    once_problems,
    step_problems,
    steps_redone,
)

JOB = "ftjob-" + "1" * 24


def started(pid: int, attempt: int) -> dict[str, Any]:
    return {"type": "message", "message": f"Job started on host:{pid}:ab12cd (attempt {attempt})"}


def step(n: int, event: str = "step") -> dict[str, Any]:
    return {"type": "metrics", "message": f"Step {n}", "data": {"step": n, "event": event}}


def kill(pid: int, checkpoint: int, job_id: str | None = JOB) -> Kill:
    return Kill(0, pid, job_id, checkpoint)


def test_attempts_are_split_at_each_start_and_evaluations_are_not_steps() -> None:
    events = [started(10, 1), step(1), step(4), step(4, "eval"), started(11, 2), step(5), step(8)]
    assert attempts_of(events) == [Attempt(10, 1, (1, 4)), Attempt(11, 2, (5, 8))]


def test_a_job_resumed_from_the_checkpoint_on_disk_passes() -> None:
    attempts = [Attempt(10, 1, (1, 3, 5)), Attempt(11, 2, (5, 7, 8)), Attempt(12, 3, ())]
    kills = [kill(10, 4), kill(11, 8)]
    assert step_problems(JOB, attempts, kills, 8, 2, trains=True) == []
    assert steps_redone(attempts, kills, JOB) == 1  # step 5 was trained, then lost with pid 10


def test_a_resume_before_the_checkpoint_is_a_step_trained_twice() -> None:
    attempts = [Attempt(10, 1, (1, 5)), Attempt(11, 2, (3, 8))]
    [problem] = step_problems(JOB, attempts, [kill(10, 4)], 8, 2, trains=True)
    assert "began at step 3, the checkpoint on disk was step 4: steps trained twice" in problem


def test_a_resume_after_the_checkpoint_skips_steps() -> None:
    attempts = [Attempt(10, 1, (1, 5)), Attempt(11, 2, (7, 8))]
    [problem] = step_problems(JOB, attempts, [kill(10, 4)], 8, 2, trains=True)
    assert "began at step 7" in problem and "twice" not in problem


def test_a_second_attempt_without_a_kill_means_two_workers_ran_the_job() -> None:
    attempts = [Attempt(10, 1, (1, 5)), Attempt(11, 2, (5, 8))]
    kills = [kill(10, 4, job_id="ftjob-" + "2" * 24)]  # a kill of another job's attempt
    [problem] = step_problems(JOB, attempts, kills, 8, 2, trains=True)
    assert "two workers ran the job" in problem


def test_a_checkpoint_reported_but_not_on_disk_is_caught() -> None:
    attempts = [Attempt(10, 1, (1, 7)), Attempt(11, 2, (3, 8))]
    problems = step_problems(JOB, attempts, [kill(10, 2)], 8, 2, trains=True)
    assert any("reached step 7 but the checkpoint on disk was step 2" in p for p in problems)


def test_repeated_steps_unfinished_training_and_zero_shot_training_are_caught() -> None:
    repeated = step_problems(JOB, [Attempt(10, 1, (1, 3, 3, 8))], [], 8, 2, trains=True)
    assert repeated == [f"{JOB} attempt 1 (pid 10): steps not increasing [1, 3, 3, 8]"]
    short = step_problems(JOB, [Attempt(10, 1, (1, 6))], [], 8, 2, trains=True)
    assert short == [f"{JOB}: training ended at step 6 of 8"]
    zeroshot = step_problems(JOB, [Attempt(10, 1, (1,))], [], 8, 2, trains=False)
    assert "a zero-shot job trained" in zeroshot[0]
    assert step_problems(JOB, [], [], 8, 2, trains=True) == [f"{JOB}: no 'Job started' event"]


def test_finished_exactly_once_with_one_version() -> None:
    good = {"status": "succeeded", "fine_tuned_model": "m/1", "error": None}
    events = [
        started(10, 1),
        {"type": "message", "message": "Registered m/1 (alpha=0.5)"},
        {"type": "message", "message": COMPLETED},
    ]
    assert once_problems(JOB, "m", good, events) == []
    twice = once_problems(JOB, "m", {**good, "fine_tuned_model": "m/2"}, events + events[1:])
    assert len(twice) == 3  # a second version, two registrations, two completions
    failed = once_problems(JOB, "m", {**good, "status": "failed"}, events)
    assert failed == [f"{JOB}: failed None"]


def test_where_a_kill_landed_comes_from_the_killed_attempt_s_events() -> None:
    attempts = [Attempt(10, 1, (1, 5)), Attempt(11, 2, ()), Attempt(12, 3, (5, 8))]
    assert kill_phase(kill(10, 4), attempts, 8, trains=True) == "training"
    assert kill_phase(kill(11, 4), attempts, 8, trains=True) == "before_training"
    assert kill_phase(kill(12, 8), attempts, 8, trains=True) == "after_training"
    assert kill_phase(kill(13, 8), attempts, 8, trains=True) == "between_jobs"
    assert kill_phase(kill(10, 0, job_id=None), attempts, 8, trains=True) == "between_jobs"
    assert kill_phase(kill(10, 0), [Attempt(10, 1, ())], 8, trains=False) == "zeroshot"
