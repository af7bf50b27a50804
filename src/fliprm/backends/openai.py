"""Any OpenAI-compatible ``/v1/chat/completions`` server over httpx.

Works with vLLM, SGLang, llama.cpp's ``llama-server``, Ollama (``/v1``), LM Studio and hosted
APIs. This backend makes exactly one attempt per call: the engine retries the errors marked
transient (connection errors, timeouts, 429, 5xx), with backoff. An attempt ends within
``timeout`` seconds whatever the server does (a reply trickling in byte by byte included).

A server is identified by what it says it serves, asked once (:meth:`OpenAIBackend.identify`):
vLLM's ``GET /v1/models`` entry (``root``, ``max_model_len``), llama.cpp's (``meta``: parameter
count, file size) and its ``GET /props`` (``model_path``, a hash where given). That goes into
``model_id`` and ``cache_identity``, so another model under the same served name gets other
cache keys and fingerprints. Credentials in ``base_url`` are never shown (:mod:`fliprm._net`).
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from dataclasses import replace
from typing import Any

import httpx

from .._net import redact, redact_url, retry_after_s, strip_credentials
from .._types import Completion, GenerateRequest
from ..config import fingerprint_of
from ..errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadResponse,
    ConfigError,
    ContextOverflow,
    RateLimited,
    ServerError,
)
from ._chat import DIALECTS, build_body, read_reply
from ._forcing import OPTIONAL, forcing_steps
from ._overflow import context_overflow

__all__ = ["OpenAIBackend"]


def _retry_after(resp: httpx.Response) -> float | None:
    return retry_after_s(resp.headers.get("retry-after"))


#: what a server's model entry or llama.cpp's /props may say about the weights it serves
_ENTRY_KEYS = ("root", "parent", "max_model_len", "meta")  # parent: a LoRA's base model
_PROPS_KEYS = ("model_path", "model_sha256", "sha256", "model_hash", "hash")


class OpenAIBackend:
    """A chat-completions client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1`` (``FLIPRM_BASE_URL`` / ``OPENAI_BASE_URL``).
        model: the served model name (``FLIPRM_MODEL``); some servers ignore it.
        api_key: sent as a bearer token (``FLIPRM_BACKEND_API_KEY`` / ``OPENAI_API_KEY``).
        timeout: seconds per attempt, all of it: connecting, sending, waiting and reading
            (not per read, so a server trickling its reply cannot stretch it).
        max_concurrency: calls in flight at once (keep a vLLM server busy: 32-256).
        schema_mode: how to ask for JSON-constrained output: ``"response_format"``
            (default), ``"json_schema"`` (llama.cpp native) or ``"off"``.
        dialect: which request extensions the server speaks: ``"llamacpp"``, ``"vllm"`` (also
            SGLang) or ``"generic"``; ``"auto"`` (default) asks ``GET /models`` once
            (``owned_by``) and falls back to ``"generic"``.
        likelihood_mode: how the likelihood method gets log p(instruction | response):
            ``"forced"`` (llama.cpp's server: the instruction's own tokens forced one at a time
            with a logit bias, their raw log-probabilities read back, see :mod:`._forcing`; a
            server without llama.cpp's endpoints is an error; refused on a vLLM-dialect server),
            ``"prompt_logprobs"`` (vLLM: the instruction ends a continued assistant message,
            the *server* applies the model's own chat template, and one request with
            ``prompt_logprobs`` returns the log-probability of every prompt token) or
            ``"auto"`` (by dialect: llama.cpp forced, vLLM prompt_logprobs, otherwise an
            error naming this setting).
        forced_decoding: old spelling of ``likelihood_mode="forced"``.
        extra_body: merged into every request, e.g.
            ``{"chat_template_kwargs": {"enable_thinking": False}}``; part of the cache key.

    ``model_id`` is the served name until the server has been asked what it serves
    (:meth:`identify`, done before the first call), then ``name@<12 hex digits>`` of that.

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
        from ..settings import KeysEnv, RewardEnv, RuntimeEnv

        base_url = base_url or RuntimeEnv().base_url or os.environ.get("OPENAI_BASE_URL")
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
        #: the URL as shown in errors and identities: credentials masked
        self.url = redact_url(self.base_url)
        self.model = model or RewardEnv().model or "default"
        self.api_key = api_key or KeysEnv().backend() or os.environ.get("OPENAI_API_KEY")
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
        self.extra_body = dict(extra_body or {})
        self._headers = dict(headers or {})
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"
        # What the server says it serves (None: not asked yet); replicas of one model say the
        # same, so a resume may use other replicas (the local response cache also keys on the
        # URL).
        self._server_info: dict[str, Any] | None = None
        # httpx clients and the ask-once lock belong to one event loop; keep one per loop.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def supports_forced_decoding(self) -> bool:
        """Whether this server can score a forced instruction: known once it is asked (see
        :meth:`identify`); until then assumed, and a server that turns out not to is refused
        at start by :class:`~fliprm.reward.FlipReward` (the method needs log-probabilities)."""
        if self.likelihood_mode != "auto" or self._dialect is None:
            return True
        return self._dialect in ("llamacpp", "vllm")

    @property
    def model_id(self) -> str:
        """The served name, plus a digest of what the server says it serves once known."""
        if not self._server_info:
            return self.model
        return f"{self.model}@{fingerprint_of(self._server_info)[:12]}"

    @property
    def cache_identity(self) -> dict[str, object]:
        ident: dict[str, object] = {
            "model": self.model, "base_url": strip_credentials(self.base_url),
            "extra_body": self.extra_body, "schema_mode": self.schema_mode,
            "likelihood_mode": self.likelihood_mode}
        if self._server_info:
            ident["server"] = self._server_info
        return ident

    async def identify(self) -> dict[str, Any]:
        """What the server says about the model it serves, asked once (within ``timeout``).

        ``GET /models``: the entry whose ``id`` is the served name (or the only entry) gives
        ``root``, ``max_model_len`` and a LoRA's ``parent`` (vLLM) or ``meta`` (llama.cpp: parameter count, file
        size); its ``owned_by`` gives the dialect. On llama.cpp, ``GET /props`` adds
        ``model_path`` and a hash where the server gives one. A server without these endpoints
        says nothing (``{}``): then only the served name and URL identify it. A server that
        cannot be reached is not remembered: the error is raised and the next call asks again.

        >>> b = OpenAIBackend(base_url="http://127.0.0.1:8000/v1", model="qwen05")
        >>> asyncio.run(b.identify())  # doctest: +SKIP
        {'root': '/models/qwen2.5-0.5b', 'max_model_len': 4096}
        >>> b.model_id  # doctest: +SKIP
        'qwen05@5d0b6e1c2f3a'
        """
        if self._server_info is None:
            loop = asyncio.get_running_loop()
            lock = self._locks.get(loop)
            if lock is None:
                lock = self._locks[loop] = asyncio.Lock()
            async with lock:
                if self._server_info is None:
                    try:
                        async with asyncio.timeout(self.timeout):
                            self._server_info = await self._ask_server()
                    except TimeoutError:
                        raise BackendTimeout(f"{self.url}: GET /models: no complete reply "
                                             f"within {self.timeout:g}s") from None
        return dict(self._server_info)

    async def _get(self, path: str) -> httpx.Response | None:
        """GET ``path``; ``None`` when the server has no such endpoint or refuses it."""
        try:
            resp = await self._client().get(path, timeout=min(10.0, self.timeout))
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"{self.url}: GET {path}: {type(exc).__name__}: {redact(str(exc))}") from exc
        if resp.status_code in (502, 503, 504):  # a proxy in front of a server starting
            raise ServerError(f"{self.url}: GET {path}: HTTP {resp.status_code}",
                              status_code=resp.status_code)
        if resp.status_code in (401, 403):  # a wrong key: say so, never guess a dialect
            raise BadResponse(f"{self.url}: GET {path}: HTTP {resp.status_code} (check the API "
                              "key)", status_code=resp.status_code)
        return resp if resp.status_code == 200 else None

    async def _ask_server(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        found = "generic"
        resp = await self._get("/models")
        try:
            entries = [m for m in resp.json().get("data", []) if isinstance(m, dict)] if resp else []
        except (ValueError, AttributeError, TypeError):
            entries = []
        owners = {str(m.get("owned_by", "")).lower() for m in entries}
        if owners & {"vllm", "sglang"}:
            found = "vllm"
        elif owners & {"llamacpp", "llama.cpp"}:
            found = "llamacpp"
        mine = [m for m in entries if m.get("id") == self.model]
        if not mine and len(entries) == 1:  # llama.cpp serves one model under any name
            mine = entries
        if mine:
            info.update({k: mine[0][k] for k in _ENTRY_KEYS if mine[0].get(k) is not None})
        if (self._dialect or found) == "llamacpp":
            root = self.base_url.removesuffix("/v1")
            props = await self._get(root + "/props")
            try:
                got = props.json() if props is not None else {}
            except ValueError:
                got = {}
            if isinstance(got, dict):
                info.update({k: got[k] for k in _PROPS_KEYS if got.get(k) not in (None, "")})
        if self._dialect is None:
            self._dialect = found
        return info

    async def dialect(self) -> str:
        """The server family, asked once from ``GET /models`` (``owned_by``; see
        :meth:`identify`), ``"generic"`` when it does not say.

        A server that cannot be reached is not remembered as "generic" (a vLLM still starting
        would otherwise lose its dialect for good): the call fails as unavailable and is
        retried like any other.
        """
        if self._dialect is None:
            await self.identify()
        return self._dialect or "generic"

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
        # one deadline for the whole attempt: httpx's own timeout bounds each read only
        try:
            async with asyncio.timeout(self.timeout):
                return await self._generate(request)
        except TimeoutError:
            raise BackendTimeout(
                f"{self.url}: no complete reply within {self.timeout:g}s") from None

    async def _generate(self, request: GenerateRequest) -> Completion:
        dialect = await self.dialect()
        if request.forced_text is not None:
            mode = self.likelihood_mode
            if mode == "auto":
                mode = {"llamacpp": "forced", "vllm": "prompt_logprobs"}.get(dialect, "")
            if mode == "prompt_logprobs":
                return await self._prompt_logprobs(request)
            if mode != "forced":
                raise ConfigError(
                    f"{self.url}: the likelihood and pmi methods need llama.cpp's token forcing "
                    "or prompt log-probabilities (vLLM, SGLang); this server is neither as far "
                    "as GET /models tells: use --method f1, or set likelihood_mode"
                )
            if dialect == "vllm":
                # vLLM has no llama.cpp token endpoints, and its structured_outputs grammar
                # returns log-probabilities renormalised after the mask: not a likelihood
                raise BadResponse(
                    f"{self.url}: likelihood_mode='forced' needs a llama.cpp server; "
                    "this server is vLLM/SGLang (GET /models): use "
                    "likelihood_mode='prompt_logprobs' (or 'auto')"
                )
            return await self._forced(request)
        body = build_body(request, model=self.model, schema_mode=self.schema_mode,
                          extra_body=self.extra_body, dialect=dialect)
        data, latency = await self._post("/chat/completions", body)
        return read_reply(data, latency_s=latency, prefix=request.assistant_prefix)

    async def _forced(self, request: GenerateRequest) -> Completion:
        """llama.cpp's server: the instruction's own tokens forced one at a time, their raw
        log-probabilities read back (see :mod:`._forcing`; ``/apply-template``, ``/tokenize``
        and ``/v1/completions`` live at the server's root). A server without those endpoints
        (not llama.cpp) is an error, never a reward."""
        root = self.base_url.rstrip("/").removesuffix("/v1")
        steps = forcing_steps(request)
        t0 = time.perf_counter()
        reply: Any = None
        try:
            while True:
                path, body = steps.send(reply)
                if body.pop(OPTIONAL, False):
                    try:  # an older llama.cpp without token-id grammars: the steps follow
                        reply, _ = await self._post(root + path, body)
                    except ContextOverflow:
                        raise  # the steps would not fit either
                    except BadResponse as exc:
                        reply = {"error": str(exc)}
                else:
                    reply, _ = await self._post(root + path, body)
        except StopIteration as done:
            comp: Completion = done.value
        comp.latency_s = time.perf_counter() - t0
        return comp

    async def _prompt_logprobs(self, request: GenerateRequest) -> Completion:
        """log p(forced | prompt) in one request (vLLM, SGLang).

        The forced text ends a continued assistant message (``assistant_prefix + forced``;
        ``forced_suffix`` is left out, so the prompt ends exactly where the text does and its
        last token is the text's own, as in :mod:`._forcing`). The *server* applies the model's
        own chat template (``continue_final_message: true, add_generation_prompt: false``),
        prefills once and returns one log-probability per prompt token (``prompt_logprobs``);
        the forced text's tokens are found by their characters from the end of the prompt.
        """
        forced = request.forced_text or ""
        if not forced:
            raise BadResponse("nothing to score: the forced text is empty")
        prefix = (request.assistant_prefix or "") + forced
        req = replace(request, assistant_prefix=prefix, forced_text=None, forced_suffix="",
                      json_schema=None, grammar=None)
        body = build_body(req, model=self.model, schema_mode="off",
                          extra_body=self.extra_body, dialect="vllm")
        body.update(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        data, latency = await self._post("/chat/completions", body)
        comp = read_reply(data, latency_s=latency)
        entries = data.get("prompt_logprobs") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise BadResponse(f"{self.url}: reply has no prompt_logprobs; the server does "
                              "not return prompt log-probabilities")
        comp.token_logprobs = span_logprobs(entries, forced)
        comp.text = forced
        comp.completion_tokens = 0
        comp.finish_reason = "stop"
        comp.extra["forced"] = "prompt_logprobs"
        return comp

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        try:
            resp = await self._client().post(path, json=body)
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{self.url}: no reply within {self.timeout:g}s") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"{self.url}: {type(exc).__name__}: {redact(str(exc))}") from exc
        latency = time.perf_counter() - t0
        if resp.status_code == 429:
            raise RateLimited(f"{self.url}: 429 rate limited", retry_after=_retry_after(resp))
        if resp.status_code >= 500:
            raise ServerError(f"{self.url}: HTTP {resp.status_code}: {redact(resp.text[:300])}",
                              status_code=resp.status_code)
        if resp.status_code >= 400:
            try:
                overflow = context_overflow(resp.json(), where=self.url)
            except ValueError:
                overflow = None
            if overflow is not None:
                overflow.status_code = resp.status_code
                raise overflow
            raise BadResponse(f"{self.url}: HTTP {resp.status_code}: {redact(resp.text[:300])}",
                              status_code=resp.status_code)
        try:
            return resp.json(), latency
        except ValueError:
            raise BadResponse(f"{self.url}: reply is not JSON: {redact(resp.text[:200])}") from None

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            try:
                await client.aclose()
            except (RuntimeError, BackendError):  # closed loop from another thread
                pass
        self._clients.clear()


def span_logprobs(entries: list[Any], forced: str) -> list[tuple[str, float]]:
    """``(token, logprob)`` for the prompt tokens that spell ``forced``, the text the prompt
    ends with.

    ``entries`` is vLLM's ``prompt_logprobs``: one ``{token_id: {logprob, rank, decoded_token}}``
    per prompt token, the prompt's own token first (the first entry is null: nothing predicts
    it). The tokens' ``decoded_token`` strings add up to the prompt text; where one character's
    bytes are split over several tokens, vLLM gives the earlier pieces ``""`` and the last the
    whole character, so an empty token goes with the token after it. A token that straddles
    the start of ``forced`` (a BPE merge with the text before it) is part of the span; token
    strings are clipped to the span, so their lengths add up to ``len(forced)``.

    >>> e = [None] + [{"1": {"logprob": -1.0, "decoded_token": t}} for t in ['": "', "Say", " hi"]]
    >>> span_logprobs(e, "Say hi")
    [('Say', -1.0), (' hi', -1.0)]
    >>> e = [None, {"7": {"logprob": -0.5, "decoded_token": ' "'}},
    ...      {"8": {"logprob": -2.0, "decoded_token": ""}},
    ...      {"9": {"logprob": -0.25, "decoded_token": "\u00e9t\u00e9"}}]
    >>> span_logprobs(e, "\u00e9t\u00e9")
    [('', -2.0), ('\u00e9t\u00e9', -0.25)]
    """
    toks: list[tuple[str, float]] = []
    for e in entries:
        if not e:
            toks.append(("", 0.0))
            continue
        if not isinstance(e, dict):
            raise BadResponse(f"prompt_logprobs entry is not an object: {str(e)[:100]}")
        info = next(iter(e.values()))  # the prompt's own token comes first
        if not isinstance(info, dict):
            raise BadResponse(f"prompt_logprobs entry has no logprob: {str(e)[:100]}")
        tok = info.get("decoded_token")
        if not isinstance(tok, str):
            raise BadResponse("prompt_logprobs carry no decoded tokens (server started with "
                              "--skip-tokenizer-init?): the instruction's span cannot be found")
        toks.append((tok, float(info.get("logprob", 0.0))))
    text = "".join(t for t, _ in toks)
    if not forced or not text.endswith(forced):
        raise BadResponse(
            "prompt log-probabilities do not end with the forced instruction (the server's "
            f"chat template added text after the final message?): ...{text[-80:]!r}"
        )
    start = len(text) - len(forced)
    out: list[tuple[str, float]] = []
    pending: list[tuple[str, float]] = []  # empty tokens: pieces of the next token's character
    pos = 0
    for k, (tok, lp) in enumerate(toks):
        if k == 0 and entries[0] is None:
            pos += len(tok)
            continue
        if not tok:
            pending.append((tok, lp))
            continue
        end = pos + len(tok)
        if end > start:
            out.extend(pending)
            out.append((tok[max(0, start - pos):], lp))
        pending = []
        pos = end
    return out
