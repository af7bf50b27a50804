"""Any OpenAI-compatible ``/v1/chat/completions`` server over httpx.

Works with vLLM, SGLang, llama.cpp's ``llama-server``, Ollama (``/v1``), LM Studio and hosted
APIs. This backend makes exactly one attempt per call: the engine retries the errors marked
transient (connection errors, timeouts, 429, 5xx), with backoff.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from dataclasses import replace
from typing import Any

import httpx

from .._types import Completion, GenerateRequest
from ..errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    ConfigError,
    RateLimited,
    ServerError,
)
from ._chat import DIALECTS, build_body, read_reply

__all__ = ["OpenAIBackend"]


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None


class OpenAIBackend:
    """A chat-completions client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``FLIPRM_BASE_URL`` / ``OPENAI_BASE_URL``).
        model: the served model name (``FLIPRM_MODEL``); some servers ignore it.
        api_key: sent as a bearer token (``FLIPRM_API_KEY`` / ``OPENAI_API_KEY``).
        timeout: seconds per attempt.
        max_concurrency: calls in flight at once (keep a vLLM server busy: 32-256).
        schema_mode: how to ask for JSON-constrained output: ``"response_format"``
            (default), ``"json_schema"`` (llama.cpp native) or ``"off"``.
        dialect: which request extensions the server speaks: ``"llamacpp"``, ``"vllm"`` (also
            SGLang) or ``"generic"``; ``"auto"`` (default) asks ``GET /models`` once
            (``owned_by``) and falls back to ``"generic"``.
        likelihood_mode: how the likelihood method gets log p(instruction | response):
            ``"forced"`` (llama.cpp: a grammar that admits only the instruction, and the raw
            log-probability of every forced token), ``"prompt_logprobs"`` (vLLM/SGLang: the
            instruction is part of the prompt and one request returns the prompt's
            log-probabilities; the server applies the model's own chat template) or ``"auto"``
            (by dialect).
        forced_decoding: old spelling of ``likelihood_mode="forced"``.
        extra_body: merged into every request, e.g.
            ``{"chat_template_kwargs": {"enable_thinking": False}}``; part of the cache key.

    >>> OpenAIBackend(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen3-1.7B").model_id
    'Qwen/Qwen3-1.7B'
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_concurrency: int = 16,
        schema_mode: str = "response_format",
        dialect: str = "auto",
        likelihood_mode: str = "auto",
        forced_decoding: bool | None = None,
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        base_url = base_url or os.environ.get("FLIPRM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ConfigError(
                "the openai backend needs a base URL: pass base_url=... / --base-url, "
                "or set FLIPRM_BASE_URL (e.g. http://127.0.0.1:8000/v1)"
            )
        if schema_mode not in ("response_format", "json_schema", "off"):
            raise ConfigError(f"schema_mode must be response_format, json_schema or off, not {schema_mode!r}")
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.model = model or os.environ.get("FLIPRM_MODEL") or "default"
        self.api_key = api_key or os.environ.get("FLIPRM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.schema_mode = schema_mode
        self.supports_json_schema = schema_mode != "off"
        if dialect not in ("auto", *DIALECTS):
            raise ConfigError(f"dialect must be auto, {', '.join(DIALECTS)}; not {dialect!r}")
        if forced_decoding and likelihood_mode == "auto":
            likelihood_mode = "forced"
        if likelihood_mode not in ("auto", "forced", "prompt_logprobs"):
            raise ConfigError("likelihood_mode must be auto, forced or prompt_logprobs, not "
                              f"{likelihood_mode!r}")
        self._dialect = None if dialect == "auto" else dialect
        self.likelihood_mode = likelihood_mode
        # Whether the server can score a forced instruction is known only once it is asked; a
        # server that cannot gets a per-item error naming what it lacks.
        self.supports_forced_decoding = True
        self.extra_body = dict(extra_body or {})
        self._headers = dict(headers or {})
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        # The served name: a resume may use other replicas of the same model (the response
        # cache, which is local, also keys on the URL).
        self.model_id = self.model
        # httpx clients belong to one event loop; keep one per loop.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def cache_identity(self) -> dict[str, object]:
        return {"model": self.model, "base_url": self.base_url, "extra_body": self.extra_body,
                "schema_mode": self.schema_mode, "likelihood_mode": self.likelihood_mode}

    async def dialect(self) -> str:
        """The server family, asked once from ``GET /models`` (``owned_by``)."""
        if self._dialect is None:
            found = "generic"
            try:
                resp = await self._client().get("/models", timeout=min(10.0, self.timeout))
                owners = {str(m.get("owned_by", "")).lower()
                          for m in resp.json().get("data", []) if isinstance(m, dict)}
                if owners & {"vllm", "sglang"}:
                    found = "vllm"
                elif owners & {"llamacpp", "llama.cpp"}:
                    found = "llamacpp"
            except (httpx.HTTPError, ValueError, AttributeError):
                pass
            self._dialect = found
        return self._dialect

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                base_url=self.base_url,
                headers=self._headers,
                timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                limits=httpx.Limits(
                    max_connections=self.max_concurrency,
                    max_keepalive_connections=self.max_concurrency,
                ),
            )
            self._clients[loop] = client
        return client

    async def generate(self, request: GenerateRequest) -> Completion:
        dialect = await self.dialect()
        if request.forced_text is not None:
            mode = self.likelihood_mode
            if mode == "auto":
                mode = {"llamacpp": "forced", "vllm": "prompt_logprobs"}.get(dialect, "")
            if mode == "prompt_logprobs":
                return await self._prompt_logprobs(request)
            if mode != "forced":
                raise BadResponse(
                    f"{self.base_url}: the likelihood method needs grammar-forced decoding "
                    "(llama.cpp) or prompt log-probabilities (vLLM, SGLang); this server is "
                    "neither as far as GET /models tells: set likelihood_mode"
                )
            dialect = "llamacpp"
        body = build_body(request, model=self.model, schema_mode=self.schema_mode,
                          extra_body=self.extra_body, dialect=dialect)
        data, latency = await self._post("/chat/completions", body)
        return read_reply(data, latency_s=latency, prefix=request.assistant_prefix)

    async def _prompt_logprobs(self, request: GenerateRequest) -> Completion:
        """log p(forced | prompt) in one request: the forced text ends the (continued)
        assistant message, the server applies the model's own chat template and returns the
        log-probability of every prompt token; the forced span is found by its characters."""
        forced = request.forced_text or ""
        prefix = (request.assistant_prefix or "") + forced + request.forced_suffix
        req = replace(request, assistant_prefix=prefix, forced_text=None, json_schema=None,
                      grammar=None)
        body = build_body(req, model=self.model, schema_mode="off",
                          extra_body=self.extra_body, dialect="vllm")
        body.update(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        data, latency = await self._post("/chat/completions", body)
        comp = read_reply(data, latency_s=latency)
        entries = data.get("prompt_logprobs") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise BadResponse(f"{self.base_url}: reply has no prompt_logprobs; the server does "
                              "not return prompt log-probabilities")
        comp.token_logprobs = span_logprobs(entries, forced, request.forced_suffix)
        comp.text = prefix
        return comp

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            resp = await self._client().post(path, json=body)
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{self.base_url}: no reply within {self.timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"{self.base_url}: {type(exc).__name__}: {exc}") from exc
        latency = time.perf_counter() - t0
        if resp.status_code == 429:
            raise RateLimited(f"{self.base_url}: 429 rate limited", retry_after=_retry_after(resp))
        if resp.status_code >= 500:
            raise ServerError(f"{self.base_url}: HTTP {resp.status_code}: {resp.text[:300]}",
                              status_code=resp.status_code)
        if resp.status_code >= 400:
            raise BadResponse(f"{self.base_url}: HTTP {resp.status_code}: {resp.text[:300]}",
                              status_code=resp.status_code)
        try:
            return resp.json(), latency
        except ValueError:
            raise BadResponse(f"{self.base_url}: reply is not JSON: {resp.text[:200]}") from None

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            try:
                await client.aclose()
            except (RuntimeError, BackendError):  # closed loop from another thread
                pass
        self._clients.clear()


def span_logprobs(
    entries: list[Any], forced: str, suffix: str
) -> list[tuple[str, float]]:
    """``(token, logprob)`` for the prompt tokens that spell ``forced``, which the prompt ends
    with, followed by ``suffix``. ``entries`` is vLLM's ``prompt_logprobs`` with
    ``prompt_logprobs: 0``: one ``{token_id: {logprob, decoded_token}}`` per prompt token (the
    first is null).

    >>> e = [None] + [{"1": {"logprob": -1.0, "decoded_token": t}} for t in ['": "', "Say", " hi", '"}']]
    >>> span_logprobs(e, "Say hi", '"}')
    [('Say', -1.0), (' hi', -1.0)]
    """
    toks: list[tuple[str, float]] = []
    for e in entries:
        if not e:
            toks.append(("", 0.0))
            continue
        info = next(iter(e.values()))
        toks.append((str(info.get("decoded_token", "")), float(info.get("logprob", 0.0))))
    text = "".join(t for t, _ in toks)
    tail = forced + suffix
    if not text.endswith(tail):
        raise BadResponse("prompt log-probabilities do not end with the forced instruction "
                          "(the server's chat template added text after the final message?)")
    start, stop = len(text) - len(tail), len(text) - len(suffix)
    out, pos = [], 0
    for tok, lp in toks:
        end = pos + len(tok)
        if end > start and pos < stop:
            out.append((tok, lp))
        pos = end
    return out
