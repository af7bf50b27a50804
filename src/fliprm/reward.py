"""The FLIP reward: read a response backwards and score how well it explains its instruction
(by default pmi, the instruction's log-probability given the response minus given an empty one;
``method="f1"``: infer the instruction and compare it with the real one, as the paper does)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ._net import redact
from ._sync import Portal
from ._types import Completion
from .backends import Backend, build_backend
from .cache import ResponseCache
from .config import RewardConfig, RuntimeOptions, make_config
from .engine import Engine
from .errors import ConfigError, ContextOverflow, FlipError, InputError, error_kind
from .guard import mask_instruction_echo
from .inputs import prepare_item
from .methods import Build, Item, get_method
from .neutralize import neutralize
from .registry import find_backend, method_spec
from .result import FlipResult
from .templates import Template

__all__ = ["FlipResult", "FlipReward", "truncate_middle"]

#: responses longer than this are always cut (head + tail) before any tokenisation
HARD_MAX_RESPONSE_CHARS = 200_000
_MARK = "\n[...]\n"


def truncate_middle(text: str, max_chars: int) -> tuple[str, bool]:
    """Keep the head (2/3) and the tail (1/3) of ``text`` within ``max_chars`` characters.

    The head carries what the answer is about; the tail carries its conclusion and any closing
    format, which the instruction often constrains.

    >>> truncate_middle("abcdefghijklmnop", 13)
    ('abcd\\n[...]\\nop', True)
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    keep = max(max_chars - len(_MARK), 2)
    head = (2 * keep) // 3
    tail = keep - head
    return text[:head] + _MARK + text[len(text) - tail :], True


#: items with more text than this are prepared in a worker thread, not on the event loop
OFFLOAD_CHARS = 32_768


_PREPARER: ThreadPoolExecutor | None = None


def _preparer() -> ThreadPoolExecutor:
    """One thread for big items' preparation: it is pure Python, so more threads would only
    take the GIL from the event loop more often, not prepare faster."""
    global _PREPARER
    if _PREPARER is None:
        _PREPARER = ThreadPoolExecutor(1, thread_name_prefix="fliprm-prepare")
    return _PREPARER


def _forget_preparer() -> None:
    # a forked child (data loader workers) inherits the executor but not its thread
    global _PREPARER
    _PREPARER = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_preparer)


def _text_size(*values: Any) -> int:
    """Characters of text in an item's fields (strings, chat messages), cheaply."""
    n = 0
    for v in values:
        if isinstance(v, str):
            n += len(v)
        elif isinstance(v, (list, tuple)):
            for m in v:
                content = m.get("content") if isinstance(m, dict) else None
                n += len(content) if isinstance(content, str) else 0
    return n


#: FlipReward keywords that are not RewardConfig fields: engine settings (RuntimeOptions)
_RUNTIME_ALIASES = {"max_concurrency": "concurrency"}


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    reward, runtime = {}, {}
    for key, value in options.items():
        key = _RUNTIME_ALIASES.get(key, key)
        if key in RewardConfig.model_fields:
            reward[key] = value
        elif key in RuntimeOptions.model_fields:
            runtime[key] = value
        else:
            known = sorted(set(RewardConfig.model_fields) | set(RuntimeOptions.model_fields))
            raise ConfigError(f"unknown FlipReward option {key!r}; known: {', '.join(known)}")
    return reward, runtime


class FlipReward:
    """Score responses by backward inference (FLIP, arXiv 2602.13551).

    Everything that changes a reward is one :class:`~fliprm.config.RewardConfig` (``config=``);
    keyword arguments are a thin convenience over it (any RewardConfig field, e.g.
    ``template="flip"``, ``method="likelihood"``, ``max_tokens=64``) and over
    :class:`~fliprm.config.RuntimeOptions` (``max_retries``, ``concurrency``/``max_concurrency``,
    ``total_timeout``, ``timeout``, ``base_url``, ``api_key``, ``n_threads``), which never change
    a reward.

    Args:
        backend: a :class:`~fliprm.backends.Backend` instance, or a spec (``"embedded"``,
            ``"embedded:NAME"``, ``"gguf:PATH"``, ``"openai:MODEL"`` with ``base_url``, ``"fake"``).
        config: the reward definition (default: :meth:`RewardConfig.preset` ``"default"``).
        runtime: engine options that do not change rewards.
        engine: share one :class:`Engine` (one concurrency cap, one cache) with other scorers.
        cache: a :class:`ResponseCache`, a path to one, or None.
        backend_options: extra keyword arguments for the backend constructor.

    Defaults, the same for every entry point: method ``pmi`` with the echo guard
    (``mask_echo=True``), which ranked above F1 on held-out sets (IFBench pairs 1.00 vs 0.86,
    focus4 0.95 vs 0.75; bench/README.md) and holds the copy attacks. ``explain=True`` adds the
    FLIP generation (``inferred_instruction``, ``reasoning``, ``extra["inferred_f1"]``) beside
    the reward without changing it. ``method="f1"`` is the paper's F1 (template ``flip-short``,
    the instruction only: as accurate as the reasoning-first prompt on the 0.5B model at about
    half the cost), greedy, 512 tokens, JSON-constrained; ``RewardConfig.preset("paper")``
    (``--preset paper``) is the paper's reference path. pmi needs the instruction's
    log-probabilities: a backend that cannot give them (hosted APIs, Ollama) is a
    :class:`~fliprm.errors.ConfigError` at start naming ``method="f1"``.

    Example:
        >>> from fliprm import FlipReward
        >>> rm = FlipReward("fake")
        >>> rm.config.method, rm.config.mask_echo, rm.config.template
        ('pmi', True, 'flip-short')
        >>> FlipReward("fake", method="f1").config.method
        'f1'
        >>> rm = FlipReward(explain=True)  # doctest: +SKIP
        >>> r = rm.score(["What is the capital of France?"], ["Paris is the capital."])[0]  # doctest: +SKIP
        >>> r.reward, r.inferred_instruction  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: Backend | str | None = None,
        *,
        config: RewardConfig | None = None,
        runtime: RuntimeOptions | None = None,
        engine: Engine | None = None,
        cache: ResponseCache | str | Path | None = None,
        backend_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        reward_opts, runtime_opts = _split_options(options)
        if isinstance(backend, str):
            reward_opts["backend"] = backend
        elif backend is not None:
            # a registered backend is recorded under its own name (fingerprint, identity); an
            # unregistered object, as before, as a scripted one
            reward_opts.setdefault("backend", backend.name if find_backend(backend.name)
                                   else "fake")
        base = config or RewardConfig()
        self.config: RewardConfig = base.updated(**reward_opts) if reward_opts else base
        rt = runtime or RuntimeOptions()
        if runtime_opts:
            rt = make_config(RuntimeOptions, {**rt.model_dump(), **runtime_opts})
        self.runtime: RuntimeOptions = rt
        if engine is not None:
            self.backend = engine.backend
        elif backend is None or isinstance(backend, str):
            self.backend = build_backend(self.config, self.runtime, **(backend_options or {}))
        else:
            self.backend = backend
        self._check_logprobs()
        self.family = self.config.family()
        self.method = get_method(self.config)
        self.constrained = self.config.constrained and self.backend.supports_json_schema
        self.engine = engine or Engine.from_runtime(self.backend, self.runtime, cache=cache)
        self._portal = Portal()

    @property
    def template(self) -> Template:
        return self.family.main

    def fingerprint(self) -> str:
        """The fingerprint of this reward (config + the backend's model identity)."""
        return self.config.fingerprint(self.backend.model_id)

    def identity(self) -> dict[str, Any]:
        """Every setting that changes this reward (what :meth:`fingerprint` hashes)."""
        return self.config.identity(self.backend.model_id)

    async def aidentify(self) -> dict[str, Any]:
        """:meth:`identity` after asking the backend what it serves (an HTTP judge's model, see
        :meth:`fliprm.backends.openai.OpenAIBackend.identify`); retried like a call, and a
        :class:`~fliprm.errors.BackendError` if the server cannot be reached. Entry points that
        record the identity before scoring (resumable outputs) call this first; scoring does
        it on its own before the first call.

        >>> FlipReward("fake").identify()["model_id"]
        'fake-eval'
        """
        await self.engine.identify()
        self._check_logprobs()
        return self.identity()

    def _check_logprobs(self) -> None:
        """A method that scores log-probabilities on a backend that cannot give them is one
        error at start, naming the way out; never a silent switch to another reward."""
        needs = method_spec(self.config.method).needs_logprobs
        if needs and not self.backend.supports_forced_decoding:
            raise ConfigError(
                f"method={self.config.method!r} needs the instruction's "
                f"log-probabilities, which backend {self.backend.name!r} does not give here "
                "(hosted APIs and Ollama do not); use --method f1 (method='f1'), or a backend "
                "that does: the embedded model, a llama.cpp server or vLLM"
            )

    def identify(self) -> dict[str, Any]:
        """Synchronous twin of :meth:`aidentify`."""
        return self._portal.run(self.aidentify())

    # ---- public API -------------------------------------------------------------------------

    async def ascore(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
        *,
        where: Callable[[int], str] | None = None,
    ) -> list[FlipResult]:
        """Score a batch; results come back in input order. Bad items get an error result
        (``where``: how errors name item ``i``, see :meth:`ascore_stream`)."""
        results: list[FlipResult | None] = [None] * len(instructions)
        async for i, res in self.ascore_stream(instructions, responses, contexts, where=where):
            results[i] = res
        return [r for r in results if r is not None]

    def score(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
        *,
        where: Callable[[int], str] | None = None,
    ) -> list[FlipResult]:
        """Synchronous twin of :meth:`ascore` (works inside a running event loop too)."""
        return self._portal.run(self.ascore(instructions, responses, contexts, where=where))

    async def ascore_stream(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
        *,
        where: Callable[[int], str] | None = None,
    ) -> AsyncIterator[tuple[int, FlipResult]]:
        """Yield ``(index, result)`` as each item finishes (for progress and resumable output).

        ``where(i)`` names item ``i`` in its error message (default ``"item {i}"``; a file
        scorer passes ``lambda i: f"line {lines[i]}"``), so the message is written once, with
        the caller's name for the item, and never rewritten.
        """
        for name, seq in (("instructions", instructions), ("responses", responses),
                          ("contexts", contexts)):
            if isinstance(seq, (str, bytes)):
                # a bare string is a Sequence too: it would be scored one character per item
                raise InputError(f"{name} must be a list with one entry per item, not a string")
        n = len(instructions)
        if responses is not None and len(responses) != n:
            raise InputError(f"got {n} instructions but {len(responses)} responses")
        if contexts is not None and len(contexts) != n:
            raise InputError(f"got {n} instructions but {len(contexts)} contexts")

        async def one(i: int) -> tuple[int, FlipResult]:
            resp = responses[i] if responses is not None else None
            ctx = contexts[i] if contexts is not None else None
            label = where(i) if where is not None else f"item {i}"
            return i, await self.ascore_one(instructions[i], resp, ctx, where=label)

        tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
        try:
            for fut in asyncio.as_completed(tasks):
                yield await fut
        finally:
            for t in tasks:
                t.cancel()

    async def ascore_one(
        self, instruction: Any, response: Any = None, context: Any = None, *, where: str = "item"
    ) -> FlipResult:
        """Score one pair. Never raises for bad input or a failed call: see ``result.error``."""
        base = {"method": self.config.method, "model": self.backend.model_id}
        t0 = time.perf_counter()
        try:
            res = await self._score_one(instruction, response, context, where)
        # every message is redacted: a URL with credentials in it must not reach a result
        except (InputError, ConfigError) as exc:
            # an InputError from the item's validation already names the item (exc.where)
            located = isinstance(exc, InputError) and exc.where is not None
            return FlipResult(reward=None, error=redact(str(exc) if located else f"{where}: {exc}"),
                              error_kind=error_kind(exc), **base)
        except FlipError as exc:
            # error_type: the call failed (worth a retry), as opposed to an unusable input
            return FlipResult(reward=None, error=redact(f"{where}: {type(exc).__name__}: {exc}"),
                              error_kind=error_kind(exc), latency_s=time.perf_counter() - t0,
                              extra={"error_type": type(exc).__name__}, **base)
        except Exception as exc:  # noqa: BLE001 - one item's bug must not fail the batch
            return FlipResult(reward=None, error=redact(f"{where}: internal error: "
                                                        f"{type(exc).__name__}: {exc}"),
                              error_kind="internal", latency_s=time.perf_counter() - t0,
                              extra={"error_type": type(exc).__name__}, **base)
        res.model = self.backend.model_id
        res.latency_s = time.perf_counter() - t0
        return res

    async def _score_one(self, instruction: Any, response: Any, context: Any, where: str) -> FlipResult:
        if _text_size(instruction, response, context) > OFFLOAD_CHARS:
            # validation, truncation and the echo guard cost seconds on megabytes of text: off
            # the event loop, so a server keeps answering (small items stay inline: cheaper,
            # and they reach the backend in input order)
            prepared = await asyncio.get_running_loop().run_in_executor(
                _preparer(), self._prepare, instruction, response, context, where)
        else:
            prepared = self._prepare(instruction, response, context, where)
        item, truncated, defused, masked = prepared
        template = item.template
        runner = _Runner(self, truncated)
        res = await self.method.run(runner, item)
        res.template = template.name
        res.truncated = runner.truncated
        if defused:
            res.extra["markup_defused"] = defused
        if masked:
            res.extra["echo_masked_words"] = masked
        return res

    def _prepare(self, instruction: Any, response: Any, context: Any,
                 where: str) -> tuple[Item, bool, int, int]:
        """The item as the method sees it: validated, cut, defused, echo-masked (CPU only).
        Returns (item, truncated, markup defused, echo words masked)."""
        instr, resp, ctx = prepare_item(instruction, response, context, infer=self.config.infer,
                                        where=where)
        template = self.family.for_item(ctx is not None)
        resp, truncated = truncate_middle(resp, HARD_MAX_RESPONSE_CHARS)
        if self.config.max_response_chars:
            resp, cut = truncate_middle(resp, self.config.max_response_chars)
            truncated = truncated or cut
        resp, defused = neutralize(resp)
        masked = 0
        if self.config.mask_echo:
            resp, masked = mask_instruction_echo(resp, instr)
        return Item(instr, resp, ctx, template, where), truncated, defused, masked

    # ---- lifecycle ----------------------------------------------------------------------------

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self.engine.cache is not None:
            self.engine.cache.close()

    def close(self) -> None:
        try:
            self._portal.run(self.aclose())
        finally:
            self._portal.close()

    def __enter__(self) -> FlipReward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> FlipReward:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Runner:
    """A method's view of the reward: generation with cut-to-fit on context overflow."""

    def __init__(self, reward: FlipReward, truncated: bool) -> None:
        self.reward = reward
        self.config = reward.config
        self.truncated = truncated

    async def generate(
        self, item: Item, build: Build, *, cacheable: Callable[[Completion], bool] | None
    ) -> tuple[Completion, Item]:
        """Generate; if the prompt overflows the model's context, cut the response to fit.

        llama.cpp reports the prompt's token count and the window, so each retry shrinks the
        response in proportion to the overflow (the template's own tokens stay fixed, hence a
        few rounds at most). The cut is kept for later calls on the same item.
        """
        engine = self.reward.engine
        last = ContextOverflow(None, None)
        for _ in range(4):
            req = build(item)
            if req.json_schema is not None and not self.reward.constrained:
                req = replace(req, json_schema=None)
            try:
                return await engine.generate(req, cacheable=cacheable), item
            except ContextOverflow as exc:
                if len(item.response) <= 64:
                    raise
                last = exc
                if exc.n_prompt and exc.n_ctx:
                    extra = (req.max_tokens if req.forced_text is None
                             else 2 * len(item.instruction) // 3)
                    room = max(exc.n_ctx - extra - 16, 1)
                    keep = int(len(item.response) * room / exc.n_prompt * 0.9)
                else:  # the server did not say by how much: halve it
                    keep = len(item.response) // 2
                cut, _ = truncate_middle(item.response, max(keep, 64))
                item = replace(item, response=cut)
                self.truncated = True
        raise ContextOverflow(last.n_prompt, last.n_ctx, "the prompt does not fit the model's "
                              f"context even with the response cut ({last})")
