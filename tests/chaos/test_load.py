"""Part 3 of the chaos run: ``CHAOS_CLIENTS`` concurrent clients on ``/predict`` for
``CHAOS_LOAD_SECONDS`` against an API of its own (PostgreSQL), its resident memory sampled
throughout: no 5xx, and memory flat.

Flat, exactly: the RSS at the end is at most 10% + 32 MiB above the RSS after the first minute
(after the first quarter in runs shorter than 4 minutes), once caches, the model and the
allocator's pools have grown to their working size.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from tests.chaos.conftest import Chaos, progress
from tests.reliability.clients import hammer
from tests.reliability.conftest import LiveApi, record, rss_kib
from tests.reliability.images import encode, noise
from tests.service.support import b64

pytestmark = pytest.mark.chaos

SAMPLE_EVERY_S = 5.0
GROWTH_FACTOR, GROWTH_MIB = 1.10, 32


class RssSampler(threading.Thread):
    """(seconds since start, RSS in KiB) of a process, every ``SAMPLE_EVERY_S``."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid, self.started = pid, time.monotonic()
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self.started, rss_kib(self.pid)))
            if len(self.samples) % 12 == 1:  # a line a minute
                progress(
                    f"load: {self.samples[-1][0]:.0f} s, RSS {self.samples[-1][1] // 1024} MiB"
                )
            if self.done.wait(SAMPLE_EVERY_S):
                return

    def stop(self) -> None:
        self.done.set()
        self.join(30)
        self.samples.append((time.monotonic() - self.started, rss_kib(self.pid)))

    def after(self, seconds: float) -> int:
        return next(rss for t, rss in self.samples if t >= seconds)


def test_clients_on_predict_for_minutes_with_flat_memory(chaos_api: LiveApi, chaos: Chaos) -> None:
    body = {"model": "shapes", "images": [b64(encode(noise(32), "PNG"))], "top_k": 2}
    errors: list[str] = []
    sampler = RssSampler(chaos_api.pid)
    sampler.start()
    outcomes = asyncio.run(
        hammer(chaos_api.base_url, body, chaos.load_seconds, 10**9, chaos.clients, errors)
    )
    sampler.stop()
    elapsed = sampler.samples[-1][0]
    baseline = sampler.after(min(60.0, chaos.load_seconds / 4))
    end = sampler.samples[-1][1]
    allowed = baseline * GROWTH_FACTOR + GROWTH_MIB * 1024
    retried = outcomes.pop("connection_reset_retried", 0)
    server_errors = {k: v for k, v in outcomes.items() if not k.isdigit() or k >= "500"}
    assert server_errors == {}, (outcomes, errors[:20])
    assert outcomes.get("200", 0) >= 0.99 * outcomes.total(), outcomes
    assert chaos_api.process.alive()
    assert end <= allowed, f"RSS grew from {baseline / 1024:.0f} to {end / 1024:.0f} MiB"
    record(
        "chaos_load",
        clients=chaos.clients,
        seconds=round(elapsed),
        requests=outcomes.total(),
        requests_per_s=round(outcomes.total() / elapsed, 1),
        statuses=dict(outcomes),
        connection_resets_retried=retried,
        server_errors=0,
        database=chaos_api.database,
        rss_samples=len(sampler.samples),
        rss_after_first_minute_mib=round(baseline / 1024),
        rss_end_mib=round(end / 1024),
        rss_max_mib=round(max(rss for _, rss in sampler.samples) / 1024),
        rss_allowed_mib=round(allowed / 1024),
    )
