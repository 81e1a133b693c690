"""Dynamic batching: concurrent ``/predict`` requests for one model share a forward pass.

Each loaded model gets a queue. A batch leaves at once unless company is known to be coming:
it waits only while other requests for the model are admitted and still decoding, and then
until ``max_batch`` images are waiting, those requests have all joined, or the oldest waiting
request has waited ``max_wait_s``, whichever comes first. While a forward pass runs, new
requests queue and form the next batch, so under load batches fill without any waiting; a lone
request (nothing else admitted) goes straight to the model.

Admission is bounded per model: a request that would take the images admitted (decoding,
queued or in the forward pass) past ``max_queue`` is refused before its images are decoded,
with a ``Retry-After`` estimated from the model's recent throughput. A request is never split
across batches; one larger than ``max_batch`` runs alone.

Forward passes run on one inference thread (on CPU torch already spreads one pass over every
core; on GPU the passes serialise on the device anyway); decoding and preprocessing run on a
separate thread pool, so neither blocks the event loop. A queue holds its own reference to
the model it was made for: requests admitted before the cache evicted that model still
complete with it, and the queue (with the model) is dropped once its last request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from service.errors import TooManyRequests
from service.predict.cache import LoadedModel

# Runs one forward pass: (model, images) -> probabilities on the CPU.
Forward = Callable[[LoadedModel, Tensor], Tensor]
# Told the number of images of each forward pass (for metrics).
OnBatch = Callable[[int], None]

RETRY_AFTER_MAX_S = 30
# Weight of the newest batch in the throughput estimate behind Retry-After.
RATE_SMOOTHING = 0.3


@dataclass
class _Pending:
    images: Tensor
    future: asyncio.Future[Tensor]
    enqueued: float

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


class ModelQueue:
    """The waiting requests of one loaded model and the task that batches them."""

    def __init__(self, model: LoadedModel, batcher: Batcher) -> None:
        self.model = model
        self._batcher = batcher
        self._pending: deque[_Pending] = deque()
        self._waiting = 0  # images in _pending
        self.admitted = 0  # images admitted and not yet answered
        self.decoding = 0  # images admitted and not yet submitted (being decoded)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def admit(self, n: int) -> Admission:
        """Reserve ``n`` images' places now, or raise 429; the places are held until exit, and
        the images count as decoding until ``Admission.submit`` queues them."""
        limit = self._batcher.max_queue
        # An empty queue always admits, so a request larger than the limit is not refused forever.
        if self.admitted and self.admitted + n > limit:
            retry = self._batcher.retry_after_s(self.model, self.admitted)
            raise TooManyRequests(
                f"model {self.model.ref} has {self.admitted} images in its queue (limit {limit}); "
                f"retry after {retry} s",
                retry_after_s=retry,
            )
        self.admitted += n
        self.decoding += n
        return Admission(self, n)

    def _decoded(self, n: int) -> None:
        """``n`` images left decoding (queued, or failed): a waiting drain may go now."""
        self.decoding -= n
        self._wakeup.set()

    def _released(self, n: int) -> None:
        self.admitted -= n
        if self.admitted == 0:
            self._batcher.release(self)

    @property
    def waiting(self) -> int:
        """Images queued for the next forward pass (not those being decoded or in a pass)."""
        return self._waiting

    def _enqueue(self, images: Tensor) -> asyncio.Future[Tensor]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Tensor] = loop.create_future()
        self._pending.append(_Pending(images, future, loop.time()))
        self._waiting += int(images.shape[0])
        self._wakeup.set()
        if self._task is None:
            self._task = loop.create_task(self._drain())
        return future

    def wait_s(self, now: float) -> float:
        """How long the next batch waits for company, at loop time ``now`` (0: it leaves now).

        It waits only while requests admitted after it are still decoding and there is room
        for them: a lone request, a full batch or a batch whose oldest request has waited
        ``max_wait_s`` leaves at once.
        """
        if not self._pending or not self.decoding or self._waiting >= self._batcher.max_batch:
            return 0.0
        return max(0.0, self._pending[0].enqueued + self._batcher.max_wait_s - now)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                wait = self.wait_s(loop.time())
                if wait > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wakeup.wait()
                    continue
                batch = self._take()
                if batch:
                    await self._run(batch)
        finally:
            # Set in the same loop step the loop exits: a later submit starts a new task.
            self._task = None

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._pending:
            item = self._pending[0]
            if item.future.done():  # the client went away while it waited
                self._pending.popleft()
                self._waiting -= item.size
                continue
            if batch and size + item.size > self._batcher.max_batch:
                break
            self._pending.popleft()
            self._waiting -= item.size
            batch.append(item)
            size += item.size
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        # Requests in one form (decoded uint8 HWC pixels, or preprocessed float tensors from the
        # Open Inference Protocol's FP32 input) share a pass; each other form runs its own.
        forms: dict[tuple[torch.dtype, tuple[int, ...]], list[_Pending]] = {}
        for item in batch:
            forms.setdefault((item.images.dtype, tuple(item.images.shape[1:])), []).append(item)
        for group in forms.values():
            await self._run_form(group)

    async def _run_form(self, batch: list[_Pending]) -> None:
        images = batch[0].images if len(batch) == 1 else torch.cat([p.images for p in batch])
        try:
            probs = await self._batcher.forward_async(self.model, images)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            # One request's images broke the shared pass: run each alone, so only it fails.
            for item in batch:
                await self._run_form([item])
            return
        start = 0
        for item in batch:
            _settle(item.future, result=probs[start : start + item.size])
            start += item.size


class Admission:
    """A request's places in its model's queue (``ModelQueue.admit``): a context manager that
    holds them until the request is answered or fails."""

    def __init__(self, queue: ModelQueue, n: int) -> None:
        self.queue = queue
        self.n = n
        self._decoding = True

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self._leave_decoding()
        self.queue._released(self.n)

    def _leave_decoding(self) -> None:
        if self._decoding:
            self._decoding = False
            self.queue._decoded(self.n)

    async def submit(self, images: Tensor) -> Tensor:
        """Queue the request's preprocessed ``images`` (N, ...); their (N, classes) output."""
        self._leave_decoding()
        return await self.queue._enqueue(images)


def _settle(
    future: asyncio.Future[Tensor], result: Tensor | None = None, exc: Exception | None = None
) -> None:
    if future.done():  # cancelled by a client that disconnected
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        assert result is not None
        future.set_result(result)


class Batcher:
    """Every model's queue, the decoding thread pool and the inference thread of one process."""

    def __init__(
        self,
        forward: Forward,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        decode_threads: int = 0,
        on_batch: OnBatch | None = None,
    ) -> None:
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        threads = decode_threads or min(4, os.cpu_count() or 1)
        self.decode_pool = ThreadPoolExecutor(threads, thread_name_prefix="rcs-decode")
        self.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="rcs-infer")
        # Keyed by the loaded model object: after an eviction and reload of the same version,
        # the old queue drains with the old copy while new requests use the new one.
        self._queues: dict[int, ModelQueue] = {}
        self._rates: dict[str, float] = {}  # model ref -> images/s, for Retry-After

    def queue_for(self, model: LoadedModel) -> ModelQueue:
        queue = self._queues.get(id(model))
        if queue is None:
            queue = self._queues[id(model)] = ModelQueue(model, self)
        return queue

    def release(self, queue: ModelQueue) -> None:
        """Drop an idle queue, and with it the queue's reference to its model."""
        if self._queues.get(id(queue.model)) is queue:
            del self._queues[id(queue.model)]

    def queues(self) -> list[ModelQueue]:
        """The queues with requests admitted and not yet answered (idle ones are dropped)."""
        return list(self._queues.values())

    async def preprocess(self, fn: Callable[[], Tensor]) -> Tensor:
        return await asyncio.get_running_loop().run_in_executor(self.decode_pool, fn)

    async def forward_async(self, model: LoadedModel, images: Tensor) -> Tensor:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        probs = await loop.run_in_executor(self.infer_pool, self.forward, model, images)
        n = int(images.shape[0])
        rate = n / max(time.perf_counter() - started, 1e-6)
        old = self._rates.get(model.ref)
        self._rates[model.ref] = rate if old is None else old + RATE_SMOOTHING * (rate - old)
        if self.on_batch is not None:
            self.on_batch(n)
        return probs

    def retry_after_s(self, model: LoadedModel, queued: int) -> int:
        """Seconds until the images queued now are likely served (at least 1)."""
        rate = self._rates.get(model.ref)
        if not rate:
            return 1
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(queued / rate)))

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.infer_pool.shutdown(wait=False, cancel_futures=True)
