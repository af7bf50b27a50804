"""The layer above every backend: retries, a concurrency cap, a deadline and the cache."""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ._net import MAX_RETRY_AFTER_S
from ._types import Completion, GenerateRequest
from .backends import Backend
from .cache import ResponseCache, cache_key, cacheable_request
from .errors import BackendError, BackendTimeout, RateLimited

if TYPE_CHECKING:
    from .config import RuntimeOptions

__all__ = ["MAX_BACKOFF_S", "Engine", "EngineStats"]

#: the longest pause between two attempts (jittered exponential backoff stops growing here)
MAX_BACKOFF_S = 30.0

T = TypeVar("T")


@dataclass
class EngineStats:
    calls: int = 0
    retries: int = 0
    failures: int = 0
    cache_hits: int = 0
    deduplicated: int = 0
    in_flight: int = 0


class Engine:
    """Wraps one backend. Only errors marked transient are retried, with jittered backoff.

    Args:
        backend: any :class:`fliprm.backends.Backend`.
        max_retries: extra attempts after the first, for transient errors only.
        max_concurrency: calls in flight at once (default: the backend's own figure).
        total_timeout: seconds for a whole call including retries and the pauses between
            them, counted from its first attempt (time queued behind ``max_concurrency`` is
            not counted); ``None``: no limit. :class:`~fliprm.FlipReward` passes
            :attr:`RuntimeOptions.deadline_s <fliprm.config.RuntimeOptions.deadline_s>`.
            A retry that could not start before the deadline (``Retry-After`` included) is
            not waited for: the last error is raised at once.
        cache: a :class:`ResponseCache`, or ``None``.

    A backend with an ``identify()`` coroutine (the HTTP backend: what the server says it
    serves) is asked once before the first cached call, so cache keys carry that identity.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_retries: int = 3,
        max_concurrency: int | None = None,
        total_timeout: float | None = None,
        cache: ResponseCache | None = None,
        backoff_s: float = 0.5,
    ) -> None:
        self.backend = backend
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency or backend.max_concurrency
        self.total_timeout = total_timeout
        self.cache = cache
        self.backoff_s = backoff_s
        self.stats = EngineStats()
        self._sems: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )
        # Identical deterministic requests in flight share one call (GRPO groups often repeat a
        # completion; a response scored against several instructions repeats the FLIP call).
        self._inflight: dict[tuple[int, str], asyncio.Future[Completion]] = {}
        self._known = False  # the backend has said what it serves (see identify)

    @classmethod
    def from_runtime(
        cls,
        backend: Backend,
        runtime: RuntimeOptions,
        *,
        cache: ResponseCache | str | Path | None = None,
    ) -> Engine:
        """The Engine every caller builds: retries, concurrency, deadline and cache from
        ``runtime`` (:class:`~fliprm.config.RuntimeOptions`), so ``--max-retries``,
        ``--total-timeout`` and ``--cache`` mean the same in ``score``, ``eval``, ``rerank``,
        the server and the library.

        ``cache``: a :class:`ResponseCache` or a path to one; without it ``runtime.cache``
        (a path) is used, if set.

        >>> from fliprm.backends.fake import FakeBackend
        >>> from fliprm.config import RuntimeOptions
        >>> Engine.from_runtime(FakeBackend([]), RuntimeOptions(max_retries=0)).max_retries
        0
        """
        if isinstance(cache, (str, Path)):
            cache = ResponseCache(cache)
        elif cache is None and runtime.cache:
            cache = ResponseCache(runtime.cache)
        # Every call gets a finite deadline by default, except on an in-process model: its
        # work runs in a thread that a deadline cannot stop (it would only pile up behind it).
        total = runtime.total_timeout
        if total is None and not getattr(backend, "in_process", False):
            # derived from the backend's own per-attempt timeout where it has one
            attempt = getattr(backend, "timeout", None) or runtime.timeout
            total = runtime.model_copy(update={"timeout": attempt}).deadline_s
        return cls(backend, max_retries=runtime.max_retries,
                   max_concurrency=runtime.concurrency, total_timeout=total, cache=cache)

    async def aclose(self) -> None:
        """Close the backend and the cache (the Engine's owner calls this once, at the end)."""
        await self.backend.aclose()
        if self.cache is not None:
            self.cache.close()

    def _sem(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._sems.get(loop)
        if sem is None:
            sem = self._sems[loop] = asyncio.Semaphore(self.max_concurrency)
        return sem

    async def generate(
        self,
        request: GenerateRequest,
        *,
        cacheable: Callable[[Completion], bool] | None = None,
    ) -> Completion:
        """One completion; served from the cache when possible, stored when ``cacheable``."""
        clock = _Deadline(self.total_timeout)  # one deadline for identify + every attempt
        if not await self._identified(clock) or not cacheable_request(request):
            # a backend that could not say what it serves gets no cache: a key without the
            # server's model identity could serve another model's answer
            return await self._generate(request, None, cacheable, clock)
        key = cache_key(self.backend.cache_identity, request)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                return hit
        flight = (id(asyncio.get_running_loop()), key)
        shared = self._inflight.get(flight)
        if shared is not None:
            self.stats.deduplicated += 1
            comp = await asyncio.shield(shared)
            return replace(comp, from_cache=True)
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._inflight[flight] = fut
        try:
            comp = await self._generate(request, key, cacheable, clock)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: a lone caller must not log "never retrieved"
            raise
        else:
            fut.set_result(comp)
            return comp
        finally:
            self._inflight.pop(flight, None)

    async def identify(self) -> None:
        """Ask the backend what it serves now (retried like a call; raises its last error).

        For entry points that record the reward's identity before any call (a resumable
        output's settings). A no-op for backends without ``identify()``.
        """
        ident = getattr(self.backend, "identify", None)
        if ident is not None and not self._known:
            await self._with_retries(ident, _Deadline(self.total_timeout))
            self._known = True

    async def _identified(self, clock: _Deadline) -> bool:
        """Whether the backend's identity is known, asking once (no retry: the call is)."""
        ident = getattr(self.backend, "identify", None)
        if ident is None or self._known:
            return True  # answered without touching the deadline: queued time is not counted
        try:
            async with asyncio.timeout_at(clock.start()):
                await ident()
        except TimeoutError:
            if clock.at is None or asyncio.get_running_loop().time() < clock.at:
                raise  # not this deadline's
            raise BackendTimeout(f"no completion within {self.total_timeout:g}s "
                                 "(total_timeout, asking the server what it serves)") from None
        except BackendError:
            return False  # the call itself will fail (or succeed) and be retried as usual
        self._known = True
        return True

    async def _generate(
        self,
        request: GenerateRequest,
        key: str | None,
        cacheable: Callable[[Completion], bool] | None,
        clock: _Deadline,
    ) -> Completion:
        comp = await self._with_retries(lambda: self.backend.generate(request), clock)
        if key is not None and self.cache is not None and (cacheable is None or cacheable(comp)):
            self.cache.put(key, self.backend.model_id, comp)
        return comp

    async def _with_retries(self, call: Callable[[], Awaitable[T]], clock: _Deadline) -> T:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            async with self._sem():
                deadline = clock.start()  # from the first attempt: time queued is not counted
                self.stats.calls += 1
                self.stats.in_flight += 1
                try:
                    async with asyncio.timeout_at(deadline):
                        return await call()
                except TimeoutError:
                    if deadline is None or loop.time() < deadline:
                        raise  # not this deadline's
                    self.stats.failures += 1
                    raise BackendTimeout(f"no completion within {self.total_timeout:g}s "
                                         f"(total_timeout, {attempt + 1} attempt(s))") from None
                except BackendError as exc:
                    if not exc.transient or attempt >= self.max_retries:
                        self.stats.failures += 1
                        raise
                    delay = min(self.backoff_s * (2**attempt) * (0.5 + random.random()),
                                MAX_BACKOFF_S)
                    if isinstance(exc, RateLimited) and exc.retry_after:
                        delay = max(delay, min(exc.retry_after, MAX_RETRY_AFTER_S))
                    if deadline is not None and loop.time() + delay >= deadline:
                        # the next attempt could not start in time: the server's own error says
                        # more than a timeout after a pointless wait
                        self.stats.failures += 1
                        raise
                finally:
                    self.stats.in_flight -= 1
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(delay)


class _Deadline:
    """One call's deadline, started on first use (``None``: no limit)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.at: float | None = None

    def start(self) -> float | None:
        if self.seconds is not None and self.at is None:
            self.at = asyncio.get_running_loop().time() + self.seconds
        return self.at
