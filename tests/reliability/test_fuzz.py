"""Schemathesis fuzzes every operation of the OpenAPI schema against the live API: no 5xx.

Both generation modes run: positive (requests the schema allows) and negative (requests it
does not, which must be refused with a 4xx). The fast version tries a few examples per operation
and mode; the slow one many more.
"""

from __future__ import annotations

import pytest

from tests.reliability.conftest import LiveApi, record
from tests.reliability.fuzzing import fuzz


def check(live_api: LiveApi, examples: int, name: str) -> None:
    statuses, server_errors = fuzz(live_api, examples)
    assert server_errors == [], "\n".join(server_errors[:20])
    assert live_api.process.alive()
    requests = sum(statuses.values())
    record(
        name,
        requests=requests,
        database=live_api.database,
        statuses={str(k): v for k, v in sorted(statuses.items())},
        server_errors=0,
    )


def test_fuzzing_the_schema_gives_no_server_error(live_api: LiveApi) -> None:
    check(live_api, examples=3, name="schemathesis_fast")


@pytest.mark.slow
def test_fuzzing_the_schema_at_length_gives_no_server_error(live_api: LiveApi) -> None:
    check(live_api, examples=40, name="schemathesis_slow")
