"""Schemathesis over every operation of the live API's OpenAPI schema, in both generation modes:
positive (requests the schema allows) and negative (requests it does not, which must be refused
with a 4xx). Shared by the reliability fuzz tests and the chaos run."""

from __future__ import annotations

from collections import Counter

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.reliability.conftest import LiveApi
from tests.service.support import API_KEY


def fuzz(
    live_api: LiveApi, examples: int, seed: int | None = None
) -> tuple[Counter[int], list[str]]:
    """Statuses and 5xx descriptions of up to ``examples`` requests per operation and mode.

    Without ``seed`` the examples are the same on every run; rounds with different seeds try
    new ones (the chaos run's 10,000 requests)."""
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
                derandomize=seed is None,
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

            if seed is not None:
                call = hypothesis.seed(seed)(call)
            try:
                call()
            except Unsatisfiable:
                pass  # nothing to negate (an operation without parameters or body)
    return statuses, server_errors
