"""Schemathesis fuzzes every operation of the OpenAPI schema against the live API: no 5xx.

Both generation modes run: positive (requests the schema allows) and negative (requests it
does not, which must be refused with a 4xx). The fast version tries a few examples per operation
and mode; the slow one many more.
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.reliability.conftest import LiveApi, record
from tests.service.support import API_KEY


def fuzz(live_api: LiveApi, examples: int) -> tuple[Counter[int], list[str]]:
    schema = schemathesis.openapi.from_url(f"{live_api.base_url}/openapi.json")
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    headers = {"Authorization": f"Bearer {API_KEY}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case) -> None:
                # The key headers are parameters in the schema: generated ones would stop every
                # request at authentication, so the valid key replaces them.
                case.headers = {
                    k: v
                    for k, v in (case.headers or {}).items()
                    if k.lower() not in ("authorization", "x-api-key")
                }
                if case.method == "DELETE" and "/models/shapes/" in case.formatted_path:
                    return  # the model the other tests classify with stays
                response = case.call(base_url=live_api.base_url, headers=headers, timeout=60)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    server_errors.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code}: "
                        f"{response.text[:300]}"
                    )

            try:
                call()
            except Unsatisfiable:
                pass  # nothing to negate (an operation without parameters or body)
    return statuses, server_errors


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
