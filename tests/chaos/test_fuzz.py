"""Part 2 of the chaos run: schemathesis against the live API (PostgreSQL) for
``CHAOS_FUZZ_REQUESTS`` requests, both generation modes: no 5xx, and the API still up.

The reliability fuzz runs one fixed round of examples; here rounds with new seeds follow until
the number of requests is reached, so each round tries requests the earlier ones did not.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import httpx
import pytest

from tests.chaos.conftest import Chaos, Deadline, progress
from tests.reliability.conftest import LiveApi, record
from tests.reliability.fuzzing import fuzz

pytestmark = pytest.mark.chaos

MAX_ROUNDS = 50


def operation_modes(chaos_api: LiveApi) -> int:
    """How many (operation, generation mode) pairs one round of ``fuzz`` covers."""
    paths = httpx.get(f"{chaos_api.base_url}/openapi.json", timeout=30).json()["paths"]
    methods = {"get", "post", "put", "patch", "delete"}
    return 2 * sum(len(methods & set(item)) for item in paths.values())


def test_fuzzing_at_length_gives_no_server_error(chaos_api: LiveApi, chaos: Chaos) -> None:
    started = time.monotonic()
    # 0.6 s a request: what a round took on 2 cores shared with a load average of 15, with a
    # margin (about 0.1 s on a quiet machine). Checked between rounds.
    deadline = Deadline(600 + 0.6 * chaos.fuzz_requests, "the chaos fuzz part")
    pairs = operation_modes(chaos_api)
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    rounds, productive = 0, float(pairs)
    while statuses.total() < chaos.fuzz_requests and rounds < MAX_ROUNDS:
        deadline.left()
        # Some pairs run out of examples at once (no parameters to vary, nothing to negate):
        # the next round asks the others for what is left, as the last round's yield says.
        remaining = chaos.fuzz_requests - statuses.total()
        examples = max(1, math.ceil(remaining / productive))
        found, errors = fuzz(chaos_api, examples, seed=chaos.seed + rounds)
        productive = max(1.0, found.total() / examples)
        rounds += 1
        statuses += found
        server_errors += errors
        progress(f"fuzz round {rounds}: {statuses.total()} requests, {len(server_errors)} 5xx")
        if found.total() == 0:
            break
    assert server_errors == [], "\n".join(server_errors[:20])
    assert chaos_api.process.alive()
    assert statuses.total() >= chaos.fuzz_requests, f"only {statuses.total()} requests"
    record(
        "chaos_schemathesis",
        requests=statuses.total(),
        rounds=rounds,
        operation_modes=pairs,
        database=chaos_api.database,
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_errors=0,
        seconds=round(time.monotonic() - started),
        seed=chaos.seed,
    )
