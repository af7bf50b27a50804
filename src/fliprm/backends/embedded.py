"""llama.cpp on the CPU, in-process, through the prebuilt ``xllamacpp`` runtime.

xllamacpp embeds llama.cpp's own server loop: requests go in as OpenAI chat dicts and come back
as OpenAI replies (with llama.cpp ``timings``), so this backend shares its wire format with the
HTTP backend. Calls release the GIL; they run one at a time because parallel slots do not raise
throughput on a small CPU (measured: 8 long calls took 80 s sequentially and 88 s with 4 slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .._types import Completion, GenerateRequest
from ..errors import (
    BackendError,
    BackendTimeout,
    BadResponse,
    ConfigError,
    FlipError,
    MissingDependency,
)
from ..model import get_model_spec, model_path, sha256_file, verify_file
from ._chat import build_body, read_reply
from ._forcing import OPTIONAL, PROMPT_PASS, forcing_steps
from ._libllama import PromptScorer, prompt_pass_supported
from ._overflow import context_overflow

#: sequences the one-pass scorer caches (see EmbeddedBackend.prompt_scorer)
_SCORER_SEQS = 2

T = TypeVar("T")

__all__ = ["EmbeddedBackend"]


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class EmbeddedBackend:
    """The embedded default: a GGUF model run by llama.cpp on this machine's CPU.

    Args:
        model_path: a local GGUF file; ``None`` uses a packaged model (``model_name``).
        model_name: a packaged model (:data:`fliprm.model.EMBEDDED_MODELS`; default: the 0.5B).
        sha256: if given, ``model_path`` must hash to it before it is loaded. Either way the
            file is hashed in this process before llama.cpp opens it, and its identity (results,
            cache keys, fingerprints) is that hash, never its file name.
        n_ctx: context window in tokens.
        n_threads: CPU threads (default: all cores this process may use).
        prompt_cache_mib: host RAM for llama.cpp's cache of earlier prompts' KV states (reused
            when a later prompt shares their prefix). llama.cpp's own default, 8 GiB, lets a
            long run grow by several MB per distinct prompt: measured 805 MB peak RSS after 3
            IFBench items, 1,264 MB after 50. The running slot keeps its own KV cache, so
            consecutive calls sharing a prefix (system prompt, likelihood scoring of several
            instructions for one response) still reuse it at 0.
        http_port: also serve the model over HTTP on 127.0.0.1 at this port (0 = any free
            port; ``None`` = pick one anyway, as llama.cpp always listens; protected by a
            random API key unless ``api_key`` is given).
        reuse_prompt_cache: let a call start from the KV state an earlier prompt left behind
            when they share a prefix (llama.cpp's ``cache_prompt``; faster). The reused prefix
            makes the rest of the prompt run in differently sized batches, which changes float
            rounding, so a greedy answer can depend on which prompt came before (measured: 2 of
            200 IFBench rewards differed between a sequential and a sharded Ray run). ``False``
            reprocesses every prompt from scratch: the same item gives the same bits in any
            order, at the cost of re-reading the shared prefix.
        http_timeout: seconds for each of this backend's own HTTP calls to its llama.cpp
            server (tokenizing, templating), all of the call: never a hang.
        n_parallel: llama.cpp slots, each with its own ``n_ctx`` window and KV cache. Calls in
            different slots are decoded together, one batch per step: on a CPU a decode step
            costs about as much for several sequences as for one (weights are read once), so
            4 concurrent sequences ran 2.2x faster than one at a time on one core (bench/slots.py)
            (measured 2026-12-06). A call takes the free slot whose last call had the same
            messages (its KV cache holds them), a forced sequence keeps it for all its steps.
            With
            ``reuse_prompt_cache=False`` (exact mode) it is 1: a batch's composition changes
            float rounding.
        likelihood_mode: how log p(forced text | prompt) is computed (the likelihood and pmi
            methods). ``"auto"`` and ``"prompt_logprobs"``: in one forward pass through
            llama.cpp's library (:mod:`._libllama`; 3.1x faster than steps on one core);
            ``"forced"``: decoded one token at a time through the server, as over HTTP.
            ``"auto"`` falls back to ``"forced"`` where the library cannot do it;
            ``"prompt_logprobs"`` is then an error.

    >>> backend = EmbeddedBackend()  # doctest: +SKIP
    >>> exact = EmbeddedBackend(reuse_prompt_cache=False)  # doctest: +SKIP
    """

    name = "embedded"
    supports_json_schema = True
    supports_forced_decoding = True
    #: the model runs in this process (see :meth:`fliprm.engine.Engine.from_runtime`)
    in_process = True
    #: slots when none are asked for (see ``n_parallel``)
    DEFAULT_PARALLEL = 4

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_name: str | None = None,
        sha256: str | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        prompt_cache_mib: int = 128,
        http_port: int | None = None,
        api_key: str | None = None,
        reuse_prompt_cache: bool = True,
        http_timeout: float = 60.0,
        n_parallel: int | None = None,
        likelihood_mode: str = "auto",
    ) -> None:
        if model_path is not None and not Path(model_path).is_file():
            raise ConfigError(f"model file not found: {model_path}")
        self._model_path = Path(model_path) if model_path else None
        self._spec = None if model_path else get_model_spec(model_name)
        self._sha256 = self._spec.sha256 if self._spec else sha256
        self.n_ctx = n_ctx
        self.n_threads = n_threads or _default_threads()
        self.prompt_cache_mib = prompt_cache_mib
        self.reuse_prompt_cache = reuse_prompt_cache
        self.http_timeout = http_timeout
        self._port = http_port
        # llama.cpp always listens on a port; guard it with a random key unless the caller
        # asks for an open one (api_key="").
        self.api_key = secrets.token_urlsafe(24) if api_key is None else api_key
        self._server: Any = None
        #: why the model did not load; kept, so a server does not re-hash the file per request
        self._load_error: FlipError | None = None
        self._load_lock = threading.Lock()
        self.n_parallel = 1 if not reuse_prompt_cache else (n_parallel or self.DEFAULT_PARALLEL)
        if self.n_parallel < 1:
            raise ConfigError(f"n_parallel must be >= 1, not {n_parallel}")
        #: the engine keeps this many calls in flight: one per slot
        self.max_concurrency = self.n_parallel
        # free slot ids; a call takes one for its whole length (a forced sequence: all steps)
        # and prefers the slot whose last call had the same messages (its KV cache holds them)
        self._free = list(range(self.n_parallel))
        self._last: dict[int, str] = {}
        self._slot_cond = threading.Condition()
        # one thread per slot: llama.cpp calls block, and asyncio's shared default pool has
        # cpu_count + 4 threads (6 on two cores), which would leave slots idle
        self._pool = ThreadPoolExecutor(self.n_parallel, thread_name_prefix="fliprm-slot")
        if likelihood_mode not in ("auto", "forced", "prompt_logprobs"):
            raise ConfigError("likelihood_mode must be auto, forced or prompt_logprobs, not "
                              f"{likelihood_mode!r}")
        self.likelihood_mode = likelihood_mode
        self._scorer: PromptScorer | None = None
        self.load_s: float | None = None

    @property
    def sha256(self) -> str:
        """The model file's sha256 (hashed once per process for a plain ``gguf:`` path)."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.model_path)
        return self._sha256

    @property
    def model_id(self) -> str:
        name = self._spec.file_name.removesuffix(".gguf") if self._spec else self._model_path.stem  # type: ignore[union-attr]
        return f"{name}@{self.sha256[:12]}"

    @property
    def cache_identity(self) -> dict[str, object]:
        ident: dict[str, object] = {"model_sha256": self.sha256, "n_ctx": self.n_ctx,
                                    "exact": not self.reuse_prompt_cache,
                                    "likelihood": self.likelihood_route}
        if not self.reuse_prompt_cache:  # bit-exact results also depend on the thread count
            ident["n_threads"] = self.n_threads
        return ident

    @property
    def likelihood_route(self) -> str:
        """``"prompt-pass"`` or ``"forced"``: how forced texts are scored (``likelihood_mode``
        resolved against the installed library)."""
        if self.likelihood_mode == "forced":
            return "forced"
        if prompt_pass_supported():
            return "prompt-pass"
        if self.likelihood_mode == "prompt_logprobs":
            raise ConfigError("likelihood_mode prompt_logprobs: this llama.cpp library gives no "
                              "prompt log-probabilities; use likelihood_mode forced")
        return "forced"

    @property
    def model_path(self) -> Path:
        if self._model_path is not None:
            return self._model_path
        assert self._spec is not None
        return model_path(self._spec, verify=False)

    def start(self) -> None:
        """Verify and load the model now (otherwise the first call does it).

        A failure is remembered: later calls raise it again at once, without re-hashing or
        re-loading the file (build a new backend after fixing it).
        """
        with self._load_lock:
            if self._server is not None:
                return
            if self._load_error is not None:
                raise self._load_error.with_traceback(None)
            try:
                self._load()
            except FlipError as exc:
                self._load_error = exc
                raise

    def _load(self) -> None:
        t0 = time.perf_counter()
        path = self.model_path
        # Hash the whole file in this process, every load: a stamp or an mtime can be faked.
        hint = self._spec.install_hint if self._spec else ""
        verify_file(path, self.sha256, hint=hint)
        try:
            import xllamacpp
        except ImportError:
            raise MissingDependency(
                "the embedded backend needs the llama.cpp runtime: pip install 'fliprm[embedded]'"
            ) from None
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        # llama.cpp splits n_ctx over its slots: each slot gets the whole window asked for
        p.n_ctx = self.n_ctx * self.n_parallel
        p.n_parallel = self.n_parallel
        p.cache_ram_mib = self.prompt_cache_mib
        p.cpuparams.n_threads = self.n_threads
        p.cpuparams_batch.n_threads = self.n_threads
        p.warmup = False
        p.verbosity = 0
        p.hostnames = ["127.0.0.1"]
        if self.api_key:
            p.api_keys = [self.api_key]
        if self._port is not None:
            p.port = self._port
        try:
            self._server = xllamacpp.Server(p)
        except Exception as exc:
            raise BackendError(f"llama.cpp could not load {path}: {exc}") from exc
        self.load_s = time.perf_counter() - t0

    @property
    def http_url(self) -> str:
        """The OpenAI-compatible URL llama.cpp serves this model on (127.0.0.1 only)."""
        self.start()
        return str(self._server.listening_address)

    @contextlib.contextmanager
    def _slot(self, messages: Any = None) -> Iterator[int]:
        """A free llama.cpp slot for one call (blocks while all are busy): the one whose last
        call had the same ``messages`` if it is free (one answer scored against several
        instructions, or forced and then explained, reads the answer once), else the least
        recently used."""
        key = json.dumps(messages, sort_keys=True, default=str) if messages is not None else None
        with self._slot_cond:
            while not self._free:
                self._slot_cond.wait()
            slot = next((s for s in self._free if key is not None and self._last.get(s) == key),
                        self._free[0])
            self._free.remove(slot)
        try:
            yield slot
        finally:
            with self._slot_cond:
                if key is not None:
                    self._last[slot] = key
                self._free.append(slot)
                self._slot_cond.notify()

    def _call(self, body: dict[str, Any]) -> tuple[Any, float]:
        self.start()
        with self._slot(body.get("messages")) as slot:
            t0 = time.perf_counter()
            try:
                reply = self._server.handle_chat_completions({**body, "id_slot": slot})
            except Exception as exc:  # the runtime's own errors stop here
                raise BackendError(f"llama.cpp failed: {exc}") from exc
            return reply, time.perf_counter() - t0

    async def generate(self, request: GenerateRequest) -> Completion:
        if request.forced_text is not None:
            return await self._in_pool(self._force, request)
        body = build_body(request, schema_mode="json_schema",
                          extra_body=None if self.reuse_prompt_cache else {"cache_prompt": False})
        reply, latency = await self._in_pool(self._call, body)
        if isinstance(reply, dict) and "error" in reply:
            _raise_reply_error(reply)
        return read_reply(reply, latency_s=latency, prefix=request.assistant_prefix)

    async def _in_pool(self, fn: Callable[[Any], T], arg: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)

    def prompt_scorer(self) -> PromptScorer:
        """The one-pass scorer (created on first use; nothing is loaded until it scores).

        It caches ``min(n_parallel, 2)`` sequences, not one per slot: each holds ``n_ctx`` KV
        positions, and the calls it serves are serialised, so a response and the empty-response
        baseline are what it reuses. Measured side by side (bench/README.md, one pass): 2 vs 8
        sequences scored focus4 and IFBench pairs at the same speed and accuracy, peak RSS 2.5
        vs 3.1 GB.

        >>> EmbeddedBackend(n_parallel=8).prompt_scorer().n_seqs  # doctest: +SKIP
        2
        """
        if self._scorer is None:
            with self._load_lock:
                if self._scorer is None:
                    self._scorer = PromptScorer(self.model_path, n_ctx=self.n_ctx,
                                                n_threads=self.n_threads,
                                                n_seqs=min(self.n_parallel, _SCORER_SEQS))
        return self._scorer

    def _force(self, request: GenerateRequest) -> Completion:
        """Teacher forcing: the canonical tokens in one pass through llama.cpp's library, or
        one at a time through the server (see :mod:`._forcing`)."""
        self.start()
        if self.likelihood_route == "prompt-pass":
            self.prompt_scorer()
            # the scorer keeps its own cached sequences: no server slot is held
            return _run_own_loop(self._force_steps(request, prompt_pass=True))
        # the whole sequence holds one slot: another call in between would evict the prefix
        # every step reuses
        with self._slot(request.messages) as slot:
            return _run_own_loop(self._force_steps(request, slot))

    async def _force_steps(self, request: GenerateRequest, slot: int = 0, *,
                           prompt_pass: bool = False) -> Completion:
        import httpx

        steps = forcing_steps(request, exact=not self.reuse_prompt_cache, one_request=False,
                              prompt_pass=prompt_pass)
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=self.http_url, headers=self._auth()) as client:
            reply: Any = None
            try:
                while True:
                    path, body = steps.send(reply)
                    if path == PROMPT_PASS:
                        assert self._scorer is not None
                        lps, cached = self._scorer.logprobs(body["ids"], body["start"],
                                                            reuse=self.reuse_prompt_cache)
                        reply = {"logprobs": lps, "cached": cached}
                    elif path == "/v1/completions":
                        optional = body.pop(OPTIONAL, False)
                        reply = self._server.handle_completions({**body, "id_slot": slot})
                        if isinstance(reply, dict) and "error" in reply and not optional:
                            _raise_reply_error(reply)
                    else:
                        reply = await self._local_post(client, path, body)
            except StopIteration as done:
                comp: Completion = done.value
        comp.latency_s = time.perf_counter() - t0
        return comp

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    async def _local_post(self, client: Any, path: str, body: dict[str, Any]) -> Any:
        """POST to this backend's own llama.cpp server, the whole call within ``http_timeout``
        (httpx's timeout bounds each read only)."""
        import httpx

        try:
            async with asyncio.timeout(self.http_timeout):
                r = await client.post(path, json=body, timeout=self.http_timeout)
                r.raise_for_status()
                return r.json()
        except TimeoutError:
            raise BackendTimeout(f"llama.cpp {path}: no complete reply within "
                                 f"{self.http_timeout:g}s") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise BackendError(f"llama.cpp {path}: {type(exc).__name__}: {exc}") from exc

    def count_tokens(self, text: str) -> int:
        """Token count of ``text`` under this model's tokenizer (used for truncation)."""
        import httpx

        async def ask() -> int:
            async with httpx.AsyncClient(base_url=self.http_url, headers=self._auth()) as client:
                return len((await self._local_post(client, "/tokenize", {"content": text}))["tokens"])

        return _run_own_loop(ask())

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        with self._load_lock:
            if self._scorer is not None:
                self._scorer.close()
                self._scorer = None
            self._server = None  # the runtime shuts its loop down when the object goes


def _raise_reply_error(reply: dict[str, Any]) -> None:
    """llama.cpp's error reply as the typed error: a prompt over the window is a
    :class:`~fliprm.errors.ContextOverflow` (its counts are fields of the reply)."""
    overflow = context_overflow(reply, where="llama.cpp")
    if overflow is not None:
        raise overflow
    err = reply["error"]
    msg = err.get("message", err) if isinstance(err, dict) else err
    raise BadResponse(f"llama.cpp: {msg}", status_code=400)


def _run_own_loop(coro: Any) -> Any:
    """Run ``coro`` to the end on a fresh event loop, from sync code (a worker thread, or a
    thread whose own loop is busy: then in another thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: list[Any] = []

    def run() -> None:
        try:
            box.append((True, asyncio.run(coro)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box.append((False, exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join()
    ok, value = box[0]
    if not ok:
        raise value
    return value
