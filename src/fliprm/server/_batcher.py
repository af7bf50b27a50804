"""Micro-batching: requests from many clients are queued and scored together.

One collector task takes the first waiting job, waits ``max_wait_s`` for company, drains the
queue up to ``max_batch_items`` and scores the batch (each request's items with one
``FlipReward.ascore`` call, all of them at once, under the reward's one concurrency cap). While
a batch runs (at most ``max_inflight_batches`` at once), new jobs pile up and form the next,
larger batch, so under load the number of backend batches grows slower than the request count.

Isolation: one request's failure never fails another's. An item that raises becomes that item's
error (``FlipReward`` does that); a request whose ``ascore`` call raises anyway has its items
retried one by one. A request whose client is gone (disconnected or timed out) is cancelled:
queued, it is dropped; running, its backend calls are cancelled.
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
    #: its ascore call, once its batch runs (cancelled when the future is: the client is gone)
    task: asyncio.Future[list[FlipResult]] | None = None
    #: each item's place in its request (errors name it); None: 0, 1, ...
    index: list[int] | None = None

    def __post_init__(self) -> None:
        self.future.add_done_callback(self._abandoned)

    def _abandoned(self, future: asyncio.Future[list[FlipResult]]) -> None:
        if future.cancelled() and self.task is not None:
            self.task.cancel()

    @property
    def n(self) -> int:
        return len(self.instructions)

    def where(self, i: int) -> str:
        """How errors name item ``i``: by its place in the client's request."""
        return f"item {i if self.index is None else self.index[i]}"


class MicroBatcher:
    """Groups queued jobs into batches for one :class:`FlipReward`. The limits come from
    :class:`~fliprm.config.ServerOptions` (``create_app`` passes them; no defaults here).

    >>> MicroBatcher(FlipReward("fake"), Metrics(), max_batch_items=32, max_wait_s=0.005,
    ...              max_queue_items=1024, max_inflight_batches=1).depth
    0
    """

    def __init__(
        self,
        reward: FlipReward,
        metrics: Metrics,
        *,
        max_batch_items: int,
        max_wait_s: float,
        max_queue_items: int,
        max_inflight_batches: int,
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
        index: Sequence[int] | None = None,
    ) -> list[FlipResult]:
        """Queue one request's items and wait for their results (in input order); ``index``:
        their places in the request, which their errors name (default 0, 1, ...)."""
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
            index=None if index is None else list(index),
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
            live = [j for j in batch if not j.future.done()]  # drop abandoned jobs
            self.metrics.cancelled_items += sum(j.n for j in batch if j.future.done())
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
        n = sum(j.n for j in jobs)
        self._inflight += n
        t0 = time.perf_counter()

        async def finish(job: _Job) -> list[FlipResult] | None:
            try:
                out = await self._score_job(job)
            except Exception as exc:  # noqa: BLE001 - a bug: this request's items fail, alone
                out = _failed(job, exc)
            # answer now, not when the batch's slowest request is done: a one-item request
            # batched with a 14 MB one waited for all of it
            if out is not None and not job.future.done():
                job.future.set_result(out)
            return out

        try:
            got = await asyncio.gather(*(finish(j) for j in jobs), return_exceptions=True)
        finally:
            self._inflight -= n
        outs = [_failed(j, out) if isinstance(out, BaseException) else out
                for j, out in zip(jobs, got)]
        elapsed = time.perf_counter() - t0
        self._item_s = 0.8 * self._item_s + 0.2 * (elapsed / max(1, n))
        self.metrics.record_batch([r for out in outs if out is not None for r in out], elapsed)
        for j, out in zip(jobs, outs):
            if out is not None and not j.future.done():
                j.future.set_result(out)

    async def _score_job(self, job: _Job) -> list[FlipResult] | None:
        """One request's results (its own item numbers), or None if its client is gone."""
        try:
            return await self._watched(
                job, self.reward.ascore(job.instructions, job.responses, job.contexts,
                                        where=job.where)
            )
        except Exception:  # noqa: BLE001 - a bug, not an item failure
            # score this request's items one by one: a bad item must not fail its neighbours
            self.metrics.batch_errors += 1
            return await self._watched(
                job, asyncio.gather(*(self._alone(job, i) for i in range(job.n)))
            )

    async def _watched(self, job: _Job, work: Any) -> list[FlipResult] | None:
        """Await ``work`` for ``job``; None (and ``work`` cancelled) once its client is gone."""
        if job.future.done():
            if asyncio.iscoroutine(work):
                work.close()
            else:
                work.cancel()
            self.metrics.cancelled_items += job.n
            return None
        job.task = asyncio.ensure_future(work)
        try:
            return list(await job.task)
        except asyncio.CancelledError:
            if job.future.cancelled():  # the client is gone: its backend calls were cancelled
                self.metrics.cancelled_items += job.n
                return None
            raise

    async def _alone(self, job: _Job, i: int) -> FlipResult:
        try:
            return (await self.reward.ascore(
                [job.instructions[i]], [job.responses[i]], [job.contexts[i]],
                where=lambda _: job.where(i),
            ))[0]
        except Exception as exc:  # noqa: BLE001
            return FlipResult(reward=None, error_kind="internal", error=f"{job.where(i)}: "
                              f"internal error: {type(exc).__name__}: {exc}")

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


def _failed(job: _Job, exc: BaseException) -> list[FlipResult]:
    """Error results for a job whose scoring failed outside any item (a bug)."""
    return [
        FlipResult(reward=None, error_kind="internal",
                   error=f"{job.where(i)}: internal error: {type(exc).__name__}: {exc}")
        for i in range(job.n)
    ]
