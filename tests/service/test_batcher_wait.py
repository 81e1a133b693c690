"""When a batch leaves (``ModelQueue.wait_s``), with the loop's clock passed in: a lone request
never waits; a queued one waits only for requests admitted and still decoding, at most
``max_wait_s`` after it queued. Nothing here measures time."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

import torch

from service.predict.batcher import Batcher

MAX_WAIT_S = 3600.0  # far longer than any test: a batch that waited for it would hang


def batcher(sizes: list[int], max_batch: int = 4) -> Batcher:
    def forward(model: Any, images: torch.Tensor) -> torch.Tensor:
        sizes.append(int(images.shape[0]))
        return images.float().sum(dim=1, keepdim=True)

    return Batcher(forward, max_batch=max_batch, max_wait_s=MAX_WAIT_S, max_queue=64)


def run(b: Batcher, scenario: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(scenario)
    finally:
        b.close()


def model() -> Any:
    return SimpleNamespace(ref="m/1")


def test_a_lone_request_leaves_at_once() -> None:
    sizes: list[int] = []
    b = batcher(sizes)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = b.queue_for(model())
        with queue.admit(1) as admission:
            submitted = asyncio.ensure_future(admission.submit(torch.ones(1, 2)))
            await asyncio.sleep(0)
            assert queue.waiting == 1 and queue.decoding == 0
            assert queue.wait_s(loop.time()) == 0
            assert (await asyncio.wait_for(submitted, 60)).tolist() == [[2.0]]

    run(b, scenario())
    assert sizes == [1]


def test_a_queued_request_waits_only_for_requests_still_decoding() -> None:
    sizes: list[int] = []
    b = batcher(sizes, max_batch=3)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = b.queue_for(model())
        second = queue.admit(1)
        with queue.admit(1) as first, queue.admit(1) as third:
            assert queue.decoding == 3
            one = asyncio.ensure_future(first.submit(torch.full((1, 1), 1.0)))
            await asyncio.sleep(0)
            now = loop.time()
            # Two more are decoding: wait for them, at most MAX_WAIT_S after the first queued.
            assert 0 < queue.wait_s(now) <= MAX_WAIT_S
            assert queue.wait_s(now + MAX_WAIT_S) == 0  # the clock passed in: waited enough
            assert sizes == []
            # ``second`` leaves without submitting (its decoding failed): only ``third`` is
            # waited for.
            with second:
                pass
            assert queue.decoding == 1 and queue.wait_s(loop.time()) > 0
            three = asyncio.ensure_future(third.submit(torch.full((1, 1), 3.0)))
            results = await asyncio.wait_for(asyncio.gather(one, three), 60)
            assert [r.tolist() for r in results] == [[[1.0]], [[3.0]]]
        assert queue.decoding == 0

    run(b, scenario())
    assert sizes == [2]


def test_a_full_batch_leaves_with_others_still_decoding() -> None:
    sizes: list[int] = []
    b = batcher(sizes, max_batch=2)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = b.queue_for(model())
        with queue.admit(2) as full, queue.admit(1) as late:
            answer = asyncio.ensure_future(full.submit(torch.ones(2, 1)))
            await asyncio.sleep(0)
            assert queue.decoding == 1 and queue.wait_s(loop.time()) == 0
            await asyncio.wait_for(answer, 60)
            await asyncio.wait_for(late.submit(torch.ones(1, 1)), 60)

    run(b, scenario())
    assert sizes == [2, 1]
