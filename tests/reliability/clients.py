"""Many concurrent HTTP clients on one route, for the load tests and the chaos run."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx

from tests.service.support import API_KEY


async def hammer(
    base_url: str,
    body: dict[str, object],
    seconds: float,
    max_requests: int,
    clients: int,
    errors: list[str],
) -> Counter[str]:
    """``clients`` clients on ``/predict``, each sending its next request when the last is
    answered; outcomes by status code or exception name. Exceptions are appended to ``errors``."""
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {API_KEY}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=60
    ) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline and outcomes.total() < max_requests:
                try:
                    response = await post(client, body, outcomes)
                    outcomes[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    outcomes[type(exc).__name__] += 1
                    errors.append(f"{seconds - deadline + time.monotonic():.1f}s {exc!r}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return outcomes


async def post(
    client: httpx.AsyncClient, body: dict[str, object], outcomes: Counter[str]
) -> httpx.Response:
    """One request, sent again once if a reused keep-alive connection was closed under it (the
    server may close an idle connection just as the client reuses it), as HTTP clients do."""
    try:
        return await client.post("/predict", json=body)
    except (httpx.ReadError, httpx.RemoteProtocolError):
        outcomes["connection_reset_retried"] += 1
        return await client.post("/predict", json=body)
