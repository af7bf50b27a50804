"""What every RL adapter shares: settings from env vars, one lazily built scorer per process,
a client for ``fliprm serve``, and the mapping from results to plain rewards.

Every adapter scores through :meth:`fliprm.FlipReward.ascore`, either in this process or on a
``fliprm serve`` (which calls the same method). Nothing here re-implements scoring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from .._net import redact, retry_after_s
from .._sync import Portal
from ..config import RewardConfig, RuntimeOptions, make_config
from ..errors import ConfigError
from ..result import FlipResult
from ..reward import FlipReward

__all__ = [
    "AdapterOptions",
    "FlipSettings",
    "Scorer",
    "ServerScorer",
    "get_scorer",
    "run_sync",
    "score_batch",
    "set_reward",
]

_ENV = "FLIPRM_"


class AdapterOptions(BaseModel):
    """How an adapter reaches its judge, beyond the reward itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: score on a ``fliprm serve`` (``POST /v1/score``) instead of in this process
    server_url: str | None = None
    server_api_key: str | None = None
    #: seconds per call to a fliprm server (whole batch, its retries included)
    server_timeout: float = 600.0
    #: reward reported where a framework cannot take None (verl, OpenRLHF, open-instruct)
    failure_score: float = 0.0
    #: TRL: read the instruction from this dataset column instead of the prompt
    instruction_column: str | None = None


_GROUPS: tuple[type[BaseModel], ...] = (RewardConfig, RuntimeOptions, AdapterOptions)


@dataclass(frozen=True)
class FlipSettings:
    """What an adapter scores with: the reward (:class:`~fliprm.config.RewardConfig`, starting
    from the ``rl`` preset, the one RL default shared with ``fliprm serve``), the runtime and
    the adapter options. Frozen and small, so it pickles into rollout workers.

    Every field of the three can come from an env var ``FLIPRM_<FIELD>`` (upper case), e.g.
    ``FLIPRM_BACKEND=openai``, ``FLIPRM_BASE_URL=http://127.0.0.1:8000/v1``,
    ``FLIPRM_METHOD=f1``, ``FLIPRM_TEMPLATE=flip``, ``FLIPRM_MASK_ECHO=false``,
    ``FLIPRM_SERVER_URL=http://127.0.0.1:8080`` (score on a ``fliprm serve``), and
    ``FLIPRM_PRESET`` picks another starting point.

    >>> FlipSettings.from_env(max_tokens=128).config.max_tokens
    128
    """

    config: RewardConfig
    runtime: RuntimeOptions
    adapter: AdapterOptions

    @classmethod
    def from_env(cls, **overrides: Any) -> FlipSettings:
        """Env vars first, then ``overrides`` (unknown keys are ignored: frameworks pass extras)."""
        values: dict[str, Any] = {}
        for group in _GROUPS:
            for name in group.model_fields:
                raw = os.environ.get(_ENV + name.upper())
                if raw is not None and raw != "":
                    values[name] = _coerce(name, raw)
        known = {n for g in _GROUPS for n in g.model_fields}
        values.update({k: v for k, v in overrides.items() if k in known and v is not None})
        if values.get("server_url") and not values.get("server_api_key") and values.get("api_key"):
            # with a server there is no in-process backend, so FLIPRM_API_KEY means the server's
            values["server_api_key"] = values["api_key"]
        preset = overrides.get("preset") or os.environ.get(_ENV + "PRESET") or "rl"
        parts = [{k: v for k, v in values.items() if k in g.model_fields} for g in _GROUPS]
        return cls(
            config=RewardConfig.preset(preset, **parts[0]),
            runtime=make_config(RuntimeOptions, parts[1]),
            adapter=make_config(AdapterOptions, parts[2]),
        )

    def __getattr__(self, name: str) -> Any:
        # settings.max_tokens, settings.server_url, ...: one flat view of the three parts
        if name.startswith("__"):
            raise AttributeError(name)
        for part in ("config", "runtime", "adapter"):
            obj = object.__getattribute__(self, part)
            if name in type(obj).model_fields:
                return getattr(obj, name)
        raise AttributeError(name)

    def key(self) -> str:
        """A stable identity for the per-process scorer cache."""
        return json.dumps([self.config.fingerprint(), self.runtime.model_dump(mode="json"),
                           self.adapter.model_dump(mode="json")], sort_keys=True, default=str)

    def build_reward(self) -> FlipReward:
        """A :class:`FlipReward` for in-process scoring (loads nothing until the first call)."""
        return FlipReward(config=self.config, runtime=self.runtime)


def known_settings() -> set[str]:
    return {n for g in _GROUPS for n in g.model_fields} | {"preset"}


def _coerce(name: str, raw: str) -> Any:
    if name == "extra_body":
        try:
            return json.loads(raw)
        except ValueError:
            raise ConfigError(f"{_ENV}EXTRA_BODY is not JSON: {raw[:80]!r}") from None
    return raw  # pydantic turns "128" into 128 and "false" into False, naming a bad value


class Scorer(Protocol):
    """Anything with FlipReward's batch method: the in-process reward or a server client."""

    async def ascore(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
    ) -> list[FlipResult]: ...


_JSON = {"content-type": "application/json"}
_RESULT_FIELDS = {f.name for f in dataclasses.fields(FlipResult)}


class ServerScorer:
    """Scores on a ``fliprm serve`` through ``POST /v1/score``; retries 503 and lost connections.

    ``timeout`` bounds each call as a whole (connecting, waiting, reading, every retry and
    ``Retry-After`` pause), not each read: a hanging or trickling server gives error results
    after ``timeout`` seconds.

    >>> ServerScorer("http://127.0.0.1:8080").url
    'http://127.0.0.1:8080/v1/score'
    """

    def __init__(
        self,
        server_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        retries: int = 5,
        chunk_items: int = 256,
    ) -> None:
        self.url = server_url.rstrip("/") + "/v1/score"
        self.timeout = timeout
        self.retries = retries
        self.chunk_items = chunk_items
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.calls = 0

    async def ascore(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
    ) -> list[FlipResult]:
        items = []
        for i, instr in enumerate(instructions):
            item: dict[str, Any] = {"response": responses[i] if responses is not None else None}
            item["messages" if isinstance(instr, list) else "instruction"] = instr
            if contexts is not None and contexts[i] is not None:
                item["context"] = contexts[i]
            items.append(item)
        # Chunks stay under the server's per-request cap; sent together, the server re-batches.
        step = max(1, self.chunk_items)
        chunks = [items[i : i + step] for i in range(0, len(items), step)]
        parts = await asyncio.gather(*(self._score_chunk(c) for c in chunks))
        return [r for part in parts for r in part]

    async def _score_chunk(self, items: list[dict[str, Any]]) -> list[FlipResult]:
        self.calls += 1
        try:
            data = await self._post({"items": items})
        except (httpx.HTTPError, ValueError) as exc:
            msg = redact(f"fliprm server {self.url}: {type(exc).__name__}: {exc}")
            return [FlipResult(reward=None, error=msg) for _ in items]
        return [
            FlipResult(**{k: v for k, v in r.items() if k in _RESULT_FIELDS})
            for r in data["results"]
        ]

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        # httpx's timeout bounds each read: the whole call, retries included, gets one deadline
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post_retrying(body, asyncio.get_running_loop().time()
                                                 + self.timeout)
        except TimeoutError:
            raise httpx.TimeoutException(
                f"no complete reply within {self.timeout:g}s (server_timeout)") from None

    async def _post_retrying(self, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        # A fresh client per call: adapters run on whatever event loop the framework owns, and a
        # pooled client must not outlive the loop it was created on.
        content = json.dumps(body).encode()
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers) as client:
            for attempt in range(self.retries + 1):
                try:
                    # json.dumps escapes to ASCII: httpx's own encoder (ensure_ascii=False) raises
                    # on a lone surrogate and would fail the whole chunk, not just that item
                    resp = await client.post(self.url, content=content, headers=_JSON)
                except httpx.TransportError:
                    wait = min(2.0**attempt, 10.0)
                    if attempt >= self.retries or loop.time() + wait >= deadline:
                        raise
                    await asyncio.sleep(wait)
                    continue
                if resp.status_code == 503 and attempt < self.retries:
                    # a server's Retry-After is capped, and never waited past the deadline
                    wait = retry_after_s(resp.headers.get("retry-after"))
                    wait = 1.0 if wait is None else wait
                    if loop.time() + wait < deadline:
                        await asyncio.sleep(wait)
                        continue
                resp.raise_for_status()
                result: dict[str, Any] = resp.json()
                return result
        raise httpx.HTTPError("unreachable")  # pragma: no cover


_lock = threading.Lock()
_scorers: dict[tuple[int, str], Scorer] = {}
_override: Scorer | None = None
_portal: tuple[int, Portal] | None = None


def set_reward(reward: Scorer | None) -> None:
    """Make every adapter in this process score with ``reward`` (``None`` restores env config).

    For a custom :class:`FlipReward` (template, cache, backend object) built in your script:

    >>> set_reward(None)
    """
    global _override
    _override = reward


def get_scorer(settings: FlipSettings) -> Scorer:
    """The scorer for ``settings``: built on first use, then reused for this process.

    Keyed by PID too, so a forked worker builds its own model instead of sharing a handle to
    the parent's llama.cpp runtime or event-loop-bound clients.
    """
    if _override is not None:
        return _override
    key = (os.getpid(), settings.key())
    with _lock:
        scorer = _scorers.get(key)
        if scorer is None:
            if settings.server_url:
                scorer = ServerScorer(
                    settings.server_url, api_key=settings.server_api_key,
                    timeout=settings.server_timeout
                )
            else:
                scorer = settings.build_reward()
            _scorers[key] = scorer
        return scorer


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


async def score_batch(
    settings: FlipSettings,
    instructions: Sequence[Any],
    responses: Sequence[Any],
    contexts: Sequence[Any] | None = None,
) -> list[FlipResult]:
    """Score through the process scorer. An empty response scores 0 without a judge call: it is
    a real (bad) policy output, not a judge failure, so it must not be skipped as None."""
    todo = [i for i, r in enumerate(responses) if not _blank(r)]
    out = [
        FlipResult(reward=0.0, precision=0.0, recall=0.0, parse_error="empty response")
        for _ in responses
    ]
    if todo:
        got = await get_scorer(settings).ascore(
            [instructions[i] for i in todo],
            [responses[i] for i in todo],
            None if contexts is None else [contexts[i] for i in todo],
        )
        for i, res in zip(todo, got):
            out[i] = res
    return out


def reward_or_none(res: FlipResult) -> float | None:
    return None if res.error is not None else res.reward


def run_sync(coro: Any) -> Any:
    """Run an adapter coroutine from sync code (also inside a running event loop)."""
    global _portal
    with _lock:
        # A forked child inherits the portal but not its loop thread: make a fresh one.
        if _portal is None or _portal[0] != os.getpid():
            _portal = (os.getpid(), Portal())
        portal = _portal[1]
    return portal.run(coro)
