"""The layer above every backend: retries, a concurrency cap, a deadline and the cache."""

from __future__ import annotations

import asyncio
import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ._types import Completion, GenerateRequest
from .backends import Backend
from .cache import ResponseCache, cache_key, cacheable_request
from .errors import BackendError, BackendTimeout, RateLimited

if TYPE_CHECKING:
    from .config import RuntimeOptions

__all__ = ["Engine", "EngineStats"]


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
        total_timeout: seconds for a whole call including retries (``None``: no limit).
        cache: a :class:`ResponseCache`, or ``None``.
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
        return cls(backend, max_retries=runtime.max_retries,
                   max_concurrency=runtime.concurrency, total_timeout=runtime.total_timeout,
                   cache=cache)

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
        if not cacheable_request(request):
            return await self._generate(request, None, cacheable)
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
            comp = await self._generate(request, key, cacheable)
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

    async def _generate(
        self,
        request: GenerateRequest,
        key: str | None,
        cacheable: Callable[[Completion], bool] | None,
    ) -> Completion:
        if self.total_timeout is not None:
            try:
                async with asyncio.timeout(self.total_timeout):
                    comp = await self._with_retries(request)
            except TimeoutError:
                self.stats.failures += 1
                raise BackendTimeout(f"no completion within {self.total_timeout:g}s") from None
        else:
            comp = await self._with_retries(request)
        if key is not None and self.cache is not None and (cacheable is None or cacheable(comp)):
            self.cache.put(key, self.backend.model_id, comp)
        return comp

    async def _with_retries(self, request: GenerateRequest) -> Completion:
        attempt = 0
        while True:
            async with self._sem():
                self.stats.calls += 1
                self.stats.in_flight += 1
                try:
                    return await self.backend.generate(request)
                except BackendError as exc:
                    if not exc.transient or attempt >= self.max_retries:
                        self.stats.failures += 1
                        raise
                    delay = self.backoff_s * (2**attempt) * (0.5 + random.random())
                    if isinstance(exc, RateLimited) and exc.retry_after:
                        delay = max(delay, exc.retry_after)
                finally:
                    self.stats.in_flight -= 1
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(min(delay, 30.0))
