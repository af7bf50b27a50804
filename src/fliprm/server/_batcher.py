"""Micro-batching: requests from many clients are queued and scored together.

One collector task takes the first waiting job, waits ``max_wait_s`` for company, drains the
queue up to ``max_batch_items`` and hands the merged batch to ``FlipReward.ascore``. While a
batch runs (at most ``max_inflight_batches`` at once), new jobs pile up and form the next,
larger batch, so under load the number of backend batches grows slower than the request count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..result import FlipResult
from ..reward import FlipReward
from ._metrics import Metrics

__all__ = ["MicroBatcher", "QueueFull", "RequestTimeout", "ShuttingDown"]


class QueueFull(Exception):
    """The bounded queue has no room: answer 503 with Retry-After."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"queue full, retry after {retry_after}s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is draining and takes no new work."""


class RequestTimeout(Exception):
    """The job did not finish within the per-request timeout."""


@dataclass
class _Job:
    instructions: list[Any]
    responses: list[Any]
    contexts: list[Any]
    future: asyncio.Future[list[FlipResult]]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def n(self) -> int:
        return len(self.instructions)


class MicroBatcher:
    """Groups queued jobs into batches for one :class:`FlipReward`.

    >>> MicroBatcher(FlipReward("fake", backend_options={"replies": []})).depth  # doctest: +SKIP
    0
    """

    def __init__(
        self,
        reward: FlipReward,
        metrics: Metrics,
        *,
        max_batch_items: int = 32,
        max_wait_s: float = 0.005,
        max_queue_items: int = 1024,
        max_inflight_batches: int = 1,
    ) -> None:
        self.reward = reward
        self.metrics = metrics
        self.max_batch_items = max_batch_items
        self.max_wait_s = max_wait_s
        self.max_queue_items = max_queue_items
        self.max_inflight_batches = max_inflight_batches
        self._queue: asyncio.Queue[_Job] | None = None
        self._collector: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._pending = 0  # items queued, not yet taken into a batch
        self._inflight = 0  # items in batches being scored
        self._closing = False
        self._item_s = 1.0  # running mean of seconds per item, for Retry-After

    @property
    def depth(self) -> int:
        return self._pending

    @property
    def inflight(self) -> int:
        return self._inflight

    def start(self) -> None:
        """Start the collector on the running loop (done lazily by the first submit too)."""
        if self._collector is None:
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(self.max_inflight_batches)
            self._collector = asyncio.create_task(self._collect(), name="fliprm-batcher")

    async def submit(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any],
        contexts: Sequence[Any],
        *,
        timeout: float | None = None,
    ) -> list[FlipResult]:
        """Queue one request's items and wait for their results (in input order)."""
        if self._closing:
            raise ShuttingDown("server is shutting down")
        if not instructions:
            return []
        self.start()
        assert self._queue is not None
        n = len(instructions)
        if self._pending + n > self.max_queue_items:
            raise QueueFull(self._retry_after())
        job = _Job(
            list(instructions),
            list(responses),
            list(contexts),
            asyncio.get_running_loop().create_future(),
        )
        self._pending += n
        self._queue.put_nowait(job)
        try:
            # shield: a timed-out client must not cancel a batch other clients share
            return await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except TimeoutError:
            raise RequestTimeout(f"no result within {timeout:g}s") from None
        finally:
            if not job.future.done():
                job.future.cancel()  # the collector skips it if not yet taken

    def _retry_after(self) -> int:
        parallel = max(1, self.reward.engine.max_concurrency)
        est = (self._pending + self._inflight) * self._item_s / parallel
        return int(min(60, max(1, round(est))))

    async def _collect(self) -> None:
        assert self._queue is not None and self._slots is not None
        while True:
            first = await self._queue.get()
            await self._slots.acquire()
            if self._queue.empty() and self.max_wait_s > 0:
                await asyncio.sleep(self.max_wait_s)  # let concurrent requests join
            batch, n = [first], first.n
            while n < self.max_batch_items and not self._queue.empty():
                job = self._queue.get_nowait()
                batch.append(job)
                n += job.n
            self._pending -= n
            live = [j for j in batch if not j.future.done()]  # drop timed-out jobs
            if not live:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(live))
            self._batches.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._batches.discard(task)
        assert self._slots is not None
        self._slots.release()

    async def _run(self, jobs: list[_Job]) -> None:
        instr = [x for j in jobs for x in j.instructions]
        resp = [x for j in jobs for x in j.responses]
        ctx = [x for j in jobs for x in j.contexts]
        self._inflight += len(instr)
        t0 = time.perf_counter()
        try:
            try:
                results = await self.reward.ascore(instr, resp, ctx)
            except Exception:  # noqa: BLE001 - a bug, not an item failure
                # score every member alone: one request's bad item must not fail the others
                self.metrics.batch_errors += 1
                results = []
                for i in range(len(instr)):
                    results.append(await self._alone(instr[i], resp[i], ctx[i], i))
        finally:
            self._inflight -= len(instr)
        elapsed = time.perf_counter() - t0
        self._item_s = 0.8 * self._item_s + 0.2 * (elapsed / max(1, len(instr)))
        self.metrics.record_batch(results, elapsed)
        at = 0
        for j in jobs:
            if not j.future.done():
                mine = results[at : at + j.n]
                for k, res in enumerate(mine):
                    # ascore names an item by its place in the merged batch; the client only
                    # knows its place in its own request
                    merged = f"item {at + k}:"
                    if res.error and res.error.startswith(merged):
                        res.error = f"item {k}:" + res.error[len(merged) :]
                j.future.set_result(mine)
            at += j.n

    async def _alone(self, instr: Any, resp: Any, ctx: Any, i: int) -> FlipResult:
        try:
            return (await self.reward.ascore([instr], [resp], [ctx]))[0]
        except Exception as exc:  # noqa: BLE001
            return FlipResult(reward=None, error=f"item {i}: internal error: "
                              f"{type(exc).__name__}: {exc}")

    async def aclose(self, timeout: float = 30.0) -> None:
        """Refuse new work, let queued and running batches finish, then stop the collector."""
        self._closing = True
        deadline = time.perf_counter() + timeout
        while (self._pending or self._batches) and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        if self._collector is not None:
            self._collector.cancel()
            try:
                await self._collector
            except asyncio.CancelledError:
                pass
            self._collector = None
