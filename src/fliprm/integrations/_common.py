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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict

from .._net import redact, retry_after_s
from .._sync import Portal
from ..config import (
    ENV_PREFIX,
    PRESETS,
    RewardConfig,
    RuntimeOptions,
    describe_differences,
    make_config,
    name_env_vars,
)
from ..errors import ConfigError, ErrorKind
from ..result import FlipResult
from ..reward import FlipReward
from ..settings import BACKEND_API_KEY, SERVER_API_KEY, KeysEnv, RewardEnv, RuntimeEnv, env_model
from ._replies import is_number as _is_number
from ._replies import match_results

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

_ENV = ENV_PREFIX


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
#: ``FLIPRM_<FIELD>`` for the adapter options; the server's key is a secret of KeysEnv
AdapterEnv = env_model("AdapterEnv", AdapterOptions, exclude={"server_api_key"})


@dataclass(frozen=True)
class FlipSettings:
    """What an adapter scores with: the reward (:class:`~fliprm.config.RewardConfig`, starting
    from the ``rl`` preset, the one RL default shared with ``fliprm serve``), the runtime and
    the adapter options. Frozen and small, so it pickles into rollout workers.

    Every field of the three can come from an env var ``FLIPRM_<FIELD>`` (upper case; read by
    the pydantic-settings models of :mod:`fliprm.settings`), e.g. ``FLIPRM_BACKEND=openai``,
    ``FLIPRM_BASE_URL=http://127.0.0.1:8000/v1``, ``FLIPRM_METHOD=f1``,
    ``FLIPRM_TEMPLATE=flip``, ``FLIPRM_MASK_ECHO=false``, ``FLIPRM_SERVER_URL=http://127.0.0.1:8080``
    (score on a ``fliprm serve``), and ``FLIPRM_PRESET`` picks another starting point. The
    keys are ``FLIPRM_BACKEND_API_KEY`` (the judge's) and ``FLIPRM_SERVER_API_KEY`` (the fliprm
    server's). Read the parts as ``settings.config.method``, ``settings.adapter.server_url``. ``explicit`` names the reward settings
    that were asked for (env, keywords, or an explicit preset's own settings): with a
    server, those and the method must match the server's, or the first call refuses.

    >>> FlipSettings.from_env(max_tokens=128).config.max_tokens
    128
    """

    config: RewardConfig
    runtime: RuntimeOptions
    adapter: AdapterOptions
    explicit: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, **overrides: Any) -> FlipSettings:
        """Env vars first, then ``overrides``; an unknown override is a :class:`ConfigError`
        (adapters drop their framework's own keywords before calling this)."""
        unknown = set(overrides) - known_settings()
        if unknown:
            raise ConfigError(f"unknown FLIP reward settings: {sorted(unknown)}")
        from_env = {**RewardEnv().given(), **RuntimeEnv().given(), **AdapterEnv().given()}
        preset = overrides.get("preset") or from_env.pop("preset", None)
        values: dict[str, Any] = {k: _coerce(k, raw) for k, raw in from_env.items()}
        given = {k: v for k, v in overrides.items() if k != "preset" and v is not None}
        values.update(given)
        for k in given:
            from_env.pop(k, None)
        for k, v in _keys(server=bool(values.get("server_url"))).items():
            values.setdefault(k, v)
        explicit = {k for k in values if k in RewardConfig.model_fields}
        if preset is not None and preset in PRESETS:
            # a preset asked for by name sets its own settings and, implicitly, the method
            explicit |= set(PRESETS[preset]) | {"method"}
        parts = [{k: v for k, v in values.items() if k in g.model_fields} for g in _GROUPS]
        try:
            return cls(
                config=RewardConfig.preset(preset or "rl", **parts[0]),
                runtime=make_config(RuntimeOptions, parts[1]),
                adapter=make_config(AdapterOptions, parts[2]),
                explicit=frozenset(explicit),
            )
        except ConfigError as exc:
            raise ConfigError(name_env_vars(str(exc), from_env)) from None

    def key(self) -> str:
        """A stable identity for the per-process scorer cache."""
        return json.dumps([self.config.fingerprint(), self.runtime.model_dump(mode="json"),
                           self.adapter.model_dump(mode="json"), sorted(self.explicit)],
                          sort_keys=True, default=str)

    def expected_identity(self) -> dict[str, Any]:
        """The part of the reward identity a server must share: the method (it decides what
        the reward means) and every setting asked for explicitly.

        >>> FlipSettings.from_env(method="f1", max_tokens=64).expected_identity()
        {'max_tokens': 64, 'method': 'f1'}
        """
        ident = self.config.identity()
        return {k: ident[k] for k in sorted(self.explicit | {"method"}) if k in ident}

    def build_reward(self) -> FlipReward:
        """A :class:`FlipReward` for in-process scoring (loads nothing until the first call)."""
        return FlipReward(config=self.config, runtime=self.runtime)


def _keys(server: bool) -> dict[str, str]:
    """The secrets from the env: ``api_key`` (the judge backend's, FLIPRM_BACKEND_API_KEY) and
    ``server_api_key`` (a fliprm server's, FLIPRM_SERVER_API_KEY). The deprecated
    FLIPRM_API_KEY stands in for a missing one: the server's where a server scores, else the
    backend's (the one meaning it had in each case)."""
    keys = KeysEnv()
    out = {"api_key": keys.backend_api_key, "server_api_key": keys.server_api_key}
    missing = "server_api_key" if server else "api_key"
    if out[missing] is None:
        out[missing] = keys.deprecated(SERVER_API_KEY if server else BACKEND_API_KEY)
    return {k: v for k, v in out.items() if v is not None}


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


class ServerScorer:
    """Scores on a ``fliprm serve`` through ``POST /v1/score``; retries 503 and lost connections.

    Every item is sent with its position as ``id`` and matched back by it, so a reply that
    drops, reorders or garbles results fails those items instead of shifting rewards. With
    ``expect`` (identity fields, see :meth:`FlipSettings.expected_identity`), the first call
    reads the server's settings from ``/health`` and refuses with a :class:`ConfigError` that
    names every difference; a reply from a server whose fingerprint changed is checked again.
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
        expect: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_url = server_url.rstrip("/")
        self.url = self.base_url + "/v1/score"
        self.timeout = timeout
        self.retries = retries
        self.chunk_items = chunk_items
        self.expect = dict(expect or {})
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._checked: str | None = None  # the server fingerprint that matched ``expect``
        self.calls = 0

    async def ascore(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
    ) -> list[FlipResult]:
        if self.expect and self._checked is None:
            try:
                await self.check_settings()
            except ConfigError:
                raise  # the settings differ: refuse, never score with the wrong reward
            except (httpx.HTTPError, ValueError) as exc:  # unreachable or not JSON: retry later
                msg = f"fliprm server {self.base_url}/health: {type(exc).__name__}: {exc}"
                return [self._failed(msg) for _ in instructions]
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
        seen = {fp for _, fp in parts if isinstance(fp, str)}
        if self.expect and seen - {self._checked}:
            # the server restarted with other settings mid-run: the rewards are the new
            # server's, so they count only if its settings still match
            await self.check_settings()
        return [r for part, _ in parts for r in part]

    async def check_settings(self) -> None:
        """Compare ``expect`` with the server's ``/health`` settings; raise on a difference."""
        async with httpx.AsyncClient(timeout=self.timeout, headers=self._headers) as client:
            resp = await client.get(self.base_url + "/health")
        if resp.status_code not in (200, 503):  # 503: draining, still says who it is
            resp.raise_for_status()
        health = resp.json()
        server = health.get("settings") if isinstance(health, dict) else None
        if not isinstance(server, dict):
            raise ConfigError(
                f"fliprm server {self.base_url} does not report its settings on /health (an "
                f"older fliprm?), so it cannot be checked against {sorted(self.expect)}; "
                "upgrade the server or unset those settings on the client"
            )
        diffs = describe_differences({k: server.get(k) for k in self.expect}, self.expect)
        if diffs:
            raise ConfigError(
                f"fliprm server {self.base_url} scores with other settings than this client "
                f"asked for (server -> client): {'; '.join(diffs)}; set the same FLIPRM_* "
                "settings on both, or drop them from the client"
            )
        self._checked = str(health.get("fingerprint"))

    def _failed(self, msg: str, kind: ErrorKind = "backend") -> FlipResult:
        # the fliprm server is this client's backend: its failures are backend failures
        return FlipResult(reward=None, error=msg, error_kind=kind)

    async def _score_chunk(self, items: list[dict[str, Any]]) -> tuple[list[FlipResult], Any]:
        self.calls += 1
        body = {"items": [{**it, "id": i} for i, it in enumerate(items)]}
        try:
            data = await self._post(body)
        except (httpx.HTTPError, ValueError) as exc:
            msg = redact(f"fliprm server {self.url}: {type(exc).__name__}: {exc}")
            kind: ErrorKind = "timeout" if isinstance(exc, httpx.TimeoutException) else "backend"
            return [self._failed(msg, kind) for _ in items], None
        out = [
            r if isinstance(r, FlipResult) else self._failed(redact(f"fliprm server {self.url}: {r}"))
            for r in match_results(data, len(items))
        ]
        return out, data.get("fingerprint") if isinstance(data, dict) else None

    async def _post(self, body: dict[str, Any]) -> Any:
        # httpx's timeout bounds each read: the whole call, retries included, gets one deadline
        try:
            async with asyncio.timeout(self.timeout):
                return await self._post_retrying(body, asyncio.get_running_loop().time()
                                                 + self.timeout)
        except TimeoutError:
            raise httpx.TimeoutException(
                f"no complete reply within {self.timeout:g}s (server_timeout)") from None

    async def _post_retrying(self, body: dict[str, Any], deadline: float) -> Any:
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
                return resp.json()
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
            adapter = settings.adapter
            if adapter.server_url:
                scorer = ServerScorer(
                    adapter.server_url, api_key=adapter.server_api_key,
                    timeout=adapter.server_timeout, expect=settings.expected_identity(),
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
    """Score through the process scorer, one checked result per response.

    An empty response scores 0 without a judge call: it is a real (bad) policy output, not a
    judge failure, so it must not be skipped as None. A scorer that returns the wrong number
    of results, or a reward that is not a finite number, fails those items (``error`` set):
    a reward is never handed to another sample and never passed on unchecked.
    """
    scorer = get_scorer(settings)
    # the scorer's own method where it has one (a FlipReward installed with set_reward)
    method = getattr(getattr(scorer, "config", None), "method", None) or settings.config.method
    todo = [i for i, r in enumerate(responses) if not _blank(r)]
    out = [empty_result(method) for _ in responses]
    if todo:
        got = await scorer.ascore(
            [instructions[i] for i in todo],
            [responses[i] for i in todo],
            None if contexts is None else [contexts[i] for i in todo],
        )
        if not isinstance(got, list) or len(got) != len(todo):
            n = len(got) if isinstance(got, list) else type(got).__name__
            msg = f"scorer returned {n} results for {len(todo)} items"
            got = [FlipResult(reward=None, error=msg, method=method) for _ in todo]
        for i, res in zip(todo, got):
            out[i] = _checked(res, method)
    return out


def empty_result(method: str) -> FlipResult:
    """The result of an empty response: reward 0, and no F1 parts outside the F1 method."""
    parts = {"precision": 0.0, "recall": 0.0} if method == "f1" else {}
    return FlipResult(reward=0.0, parse_error="empty response", method=method, **parts)


def _checked(res: Any, method: str) -> FlipResult:
    if not isinstance(res, FlipResult):
        return FlipResult(reward=None, error=f"scorer returned {type(res).__name__}, not a "
                          "FlipResult", method=method)
    if res.error is None and not _is_number(res.reward):
        return dataclasses.replace(res, reward=None, method=method,
                                   error=f"reward is not a finite number: {res.reward!r}")
    if res.error is not None or res.reward is None:
        # a failure carries no method of its own: label it with the one asked for, so
        # per-method log keys stay the same for every sample of a batch
        return dataclasses.replace(res, reward=None, method=method,
                                   error=res.error or "no reward")
    return res


def method_logs(res: FlipResult) -> dict[str, float]:
    """The numbers only ``res.method`` computes, named after what they are (0.0 where the item
    failed or was empty: frameworks need the same keys for every sample of a batch).

    >>> method_logs(FlipResult(reward=0.6, method="pmi", logprob=-1.0, extra={"pmi": 0.4}))
    {'flip_pmi': 0.4, 'flip_logprob': -1.0}
    """
    ok = not failed(res)

    def num(v: Any) -> float:
        return float(v) if ok and _is_number(v) else 0.0

    if res.method == "f1":
        return {"flip_precision": num(res.precision), "flip_recall": num(res.recall),
                "flip_parse_ok": float(ok and res.parse_ok)}
    if res.method == "pmi":
        return {"flip_pmi": num(res.extra.get("pmi")), "flip_logprob": num(res.logprob)}
    return {"flip_logprob": num(res.logprob)}


def failed(res: FlipResult) -> bool:
    """True where ``res`` has no usable reward: an error, or no finite number."""
    return res.error is not None or not _is_number(res.reward)


def reward_or_none(res: FlipResult) -> float | None:
    return None if failed(res) else float(res.reward)  # type: ignore[arg-type]


def run_sync(coro: Any) -> Any:
    """Run an adapter coroutine from sync code (also inside a running event loop)."""
    global _portal
    with _lock:
        # A forked child inherits the portal but not its loop thread: make a fresh one.
        if _portal is None or _portal[0] != os.getpid():
            _portal = (os.getpid(), Portal())
        portal = _portal[1]
    return portal.run(coro)
