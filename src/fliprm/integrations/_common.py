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
from dataclasses import dataclass, fields
from typing import Any, Protocol

import httpx

from .._sync import Portal
from ..errors import ConfigError
from ..reward import FlipResult, FlipReward

__all__ = [
    "FlipSettings",
    "Scorer",
    "ServerScorer",
    "get_scorer",
    "run_sync",
    "score_batch",
    "set_reward",
]

_ENV = "FLIPRM_"


@dataclass(frozen=True)
class FlipSettings:
    """How an adapter reaches the judge. Frozen and small, so it pickles into rollout workers.

    Every field can come from an env var named ``FLIPRM_<FIELD>`` (upper case), e.g.
    ``FLIPRM_BACKEND=openai``, ``FLIPRM_BASE_URL=http://127.0.0.1:8000/v1``,
    ``FLIPRM_SERVER_URL=http://127.0.0.1:8080`` (score on a ``fliprm serve`` instead of in-process).

    >>> FlipSettings.from_env(max_tokens=128).max_tokens
    128
    """

    backend: str = "embedded"
    base_url: str | None = None
    model: str | None = None
    api_key: str | None = None
    server_url: str | None = None
    server_api_key: str | None = None
    template: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    #: "error" (reward None: TRL skips the sample), "zero", or "raw" (the paper's fallback)
    parse_failure: str = "error"
    max_response_chars: int | None = 8000
    instruction_column: str | None = None
    #: seconds per HTTP request to a fliprm server (whole batch)
    timeout: float = 600.0
    #: reward reported where a framework cannot take None (verl, OpenRLHF, open-instruct)
    failure_score: float = 0.0

    @classmethod
    def from_env(cls, **overrides: Any) -> FlipSettings:
        """Env vars first, then ``overrides`` (unknown keys are ignored: frameworks pass extras)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(_ENV + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.name, raw)
        known = {f.name for f in fields(cls)}
        values.update({k: v for k, v in overrides.items() if k in known and v is not None})
        if values.get("server_url") and not values.get("server_api_key") and values.get("api_key"):
            # with a server there is no in-process backend, so FLIPRM_API_KEY means the server's
            values["server_api_key"] = values["api_key"]
        return cls(**values)

    def build_reward(self) -> FlipReward:
        """A :class:`FlipReward` for in-process scoring (loads nothing until the first call)."""
        opts: dict[str, Any] = {}
        if self.backend.startswith("openai"):
            opts = {"base_url": self.base_url, "api_key": self.api_key}
            if self.model:
                opts["model"] = self.model
        return FlipReward(
            self.backend,
            backend_options=opts,
            template=self.template,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            parse_failure=self.parse_failure,
            max_response_chars=self.max_response_chars,
        )


_INTS = {"max_tokens", "max_response_chars"}
_FLOATS = {"temperature", "timeout", "failure_score"}


def _coerce(name: str, raw: str) -> Any:
    try:
        if name in _INTS:
            return int(raw)
        if name in _FLOATS:
            return float(raw)
    except ValueError:
        raise ConfigError(f"{_ENV}{name.upper()}={raw!r} is not a number") from None
    return raw


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
            msg = f"fliprm server {self.url}: {type(exc).__name__}: {exc}"
            return [FlipResult(reward=None, error=msg) for _ in items]
        return [
            FlipResult(**{k: v for k, v in r.items() if k in _RESULT_FIELDS})
            for r in data["results"]
        ]

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        # A fresh client per call: adapters run on whatever event loop the framework owns, and a
        # pooled client must not outlive the loop it was created on.
        content = json.dumps(body).encode()
        async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers) as client:
            for attempt in range(self.retries + 1):
                try:
                    # json.dumps escapes to ASCII: httpx's own encoder (ensure_ascii=False) raises
                    # on a lone surrogate and would fail the whole chunk, not just that item
                    resp = await client.post(self.url, content=content, headers=_JSON)
                except httpx.TransportError:
                    if attempt >= self.retries:
                        raise
                    await asyncio.sleep(min(2.0**attempt, 10.0))
                    continue
                if resp.status_code == 503 and attempt < self.retries:
                    await asyncio.sleep(float(resp.headers.get("retry-after", "1") or 1))
                    continue
                resp.raise_for_status()
                result: dict[str, Any] = resp.json()
                return result
        raise httpx.HTTPError("unreachable")  # pragma: no cover


_lock = threading.Lock()
_scorers: dict[tuple[int, FlipSettings], Scorer] = {}
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
    key = (os.getpid(), settings)
    with _lock:
        scorer = _scorers.get(key)
        if scorer is None:
            if settings.server_url:
                scorer = ServerScorer(
                    settings.server_url, api_key=settings.server_api_key, timeout=settings.timeout
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
