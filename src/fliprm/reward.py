"""The FLIP reward: infer the instruction behind a response, compare it with the real one."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ._sync import Portal
from ._types import FLIP_REASONING_MAX_CHARS, Completion, GenerateRequest
from .backends import Backend, get_backend
from .cache import ResponseCache
from .engine import Engine
from .errors import BackendError, ConfigError, FlipError, InputError
from .guard import mask_instruction_echo
from .inputs import prepare_item
from .parse import clean_output, parse_flip
from .similarity import get_similarity
from .templates import Template, get_template

__all__ = ["FlipResult", "FlipReward", "truncate_middle"]

PARSE_POLICIES = ("raw", "zero", "error")
METHODS = ("f1", "likelihood")
#: responses longer than this are always cut (head + tail) before any tokenisation
HARD_MAX_RESPONSE_CHARS = 200_000
_MARK = "\n[...]\n"


@dataclass
class FlipResult:
    """One scored (instruction, response) pair.

    ``reward`` is None only when the item failed (``error`` says why). For the F1 method it is
    the word F1 of the inferred instruction against the real one; for the likelihood method it
    is ``exp(logprob)``, the per-token geometric-mean probability of the real instruction.
    """

    reward: float | None
    precision: float | None = None
    recall: float | None = None
    inferred_instruction: str | None = None
    reasoning: str | None = None
    raw_output: str | None = None
    parse_ok: bool = False
    parse_error: str | None = None
    error: str | None = None
    method: str = "f1"
    logprob: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    truncated: bool = False
    model: str | None = None
    template: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d


def truncate_middle(text: str, max_chars: int) -> tuple[str, bool]:
    """Keep the head (2/3) and the tail (1/3) of ``text`` within ``max_chars`` characters.

    The head carries what the answer is about; the tail carries its conclusion and any closing
    format, which the instruction often constrains.

    >>> truncate_middle("abcdefghij", 8)
    ('abcd\\n[...]\\nj', True)
    """
    if max_chars <= 0 or len(text) <= max_chars:
        return text, False
    keep = max(max_chars - len(_MARK), 2)
    head = (2 * keep) // 3
    tail = keep - head
    return text[:head] + _MARK + text[len(text) - tail :], True


_OVERFLOW = re.compile(r"\((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")


def _schema(template: Template) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if "REASONING" in template.system + template.user:
        props["REASONING"] = {"type": "string", "maxLength": FLIP_REASONING_MAX_CHARS}
    props["INFERRED INSTRUCTION"] = {"type": "string"}
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


class FlipReward:
    """Score responses by backward inference (FLIP, arXiv 2602.13551).

    Args:
        backend: a :class:`~fliprm.backends.Backend` or a spec (``"embedded"`` default,
            ``"gguf:PATH"``, ``"openai:MODEL"`` with ``base_url``).
        template: a built-in name or a :class:`Template`. Default ``"flip"`` (reasoning, then
            the instruction, as in the paper); items with a context use ``contextual_template``.
        method: ``"f1"`` (the paper) or ``"likelihood"`` (mean log p(instruction | response),
            teacher-forced: one prefill, no generation; needs a llama.cpp backend).
        parse_failure: ``"raw"`` (the reference: F1 on the raw output), ``"zero"`` or
            ``"error"`` (reward None). Every failure is flagged in the result either way.
        constrained: ask the backend for JSON-schema-constrained output.
        max_tokens, temperature, seed, top_p: decoding (paper: greedy, 512 tokens).
        max_response_chars: cut longer responses to head + tail (see :func:`truncate_middle`).
        infer: for chat-message inputs, ``"user"`` (last user turn) or ``"system"``.
        mask_echo: opt-in defence against responses that restate the instruction: runs of
            ``echo_min_words``+ words copied from the instruction are masked before inference
            (see :func:`fliprm.guard.mask_instruction_echo`).
        cache: a :class:`ResponseCache`, a path to one, or None.
        max_retries, max_concurrency, total_timeout: passed to the :class:`Engine`.

    Example:
        >>> from fliprm import FlipReward
        >>> rm = FlipReward()  # doctest: +SKIP
        >>> r = rm.score(["What is the capital of France?"], ["Paris is the capital."])[0]  # doctest: +SKIP
        >>> r.reward, r.inferred_instruction  # doctest: +SKIP
        (1.0, 'What is the capital of France?')
    """

    def __init__(
        self,
        backend: Backend | str = "embedded",
        *,
        template: Template | str | None = None,
        contextual_template: Template | str | None = None,
        method: str = "f1",
        parse_failure: str = "raw",
        constrained: bool = True,
        max_tokens: int = 512,
        temperature: float = 0.0,
        seed: int | None = None,
        top_p: float | None = None,
        similarity: str = "f1",
        max_response_chars: int | None = None,
        infer: str = "user",
        mask_echo: bool = False,
        echo_min_words: int = 6,
        cache: ResponseCache | str | Path | None = None,
        max_retries: int = 3,
        max_concurrency: int | None = None,
        total_timeout: float | None = None,
        backend_options: dict[str, Any] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, not {method!r}")
        if parse_failure not in PARSE_POLICIES:
            raise ConfigError(f"parse_failure must be one of {PARSE_POLICIES}, not {parse_failure!r}")
        if infer not in ("user", "system"):
            raise ConfigError(f"infer must be 'user' or 'system', not {infer!r}")
        if max_tokens < 1:
            raise ConfigError("max_tokens must be >= 1")
        self.backend = get_backend(backend, **(backend_options or {}))
        short = method == "likelihood"
        self.template = get_template(template or ("flip-short" if short else "flip"))
        self.contextual_template = get_template(
            contextual_template or ("flip-short-contextual" if short else "flip-contextual")
        )
        if "response" not in self.template.fields and "output" not in self.template.fields:
            raise ConfigError(f"template {self.template.name!r} has no {{response}} placeholder")
        if method == "likelihood" and not self.backend.supports_forced_decoding:
            raise ConfigError(
                f"method='likelihood' needs teacher forcing, which backend {self.backend.name!r} "
                "does not offer; use the embedded backend or a llama.cpp server "
                "(OpenAIBackend(..., forced_decoding=True))"
            )
        self.method = method
        self.parse_failure = parse_failure
        self.constrained = constrained and self.backend.supports_json_schema
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.top_p = top_p
        self.similarity = get_similarity(similarity)
        self.max_response_chars = max_response_chars
        self.infer = infer
        self.mask_echo = mask_echo
        self.echo_min_words = echo_min_words
        if isinstance(cache, (str, Path)):
            cache = ResponseCache(cache)
        self.engine = Engine(
            self.backend,
            max_retries=max_retries,
            max_concurrency=max_concurrency,
            total_timeout=total_timeout,
            cache=cache,
        )
        self._portal = Portal()

    # ---- public API -------------------------------------------------------------------------

    async def ascore(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
    ) -> list[FlipResult]:
        """Score a batch; results come back in input order. Bad items get an error result."""
        results: list[FlipResult | None] = [None] * len(instructions)
        async for i, res in self.ascore_stream(instructions, responses, contexts):
            results[i] = res
        return [r for r in results if r is not None]

    def score(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
    ) -> list[FlipResult]:
        """Synchronous twin of :meth:`ascore` (works inside a running event loop too)."""
        return self._portal.run(self.ascore(instructions, responses, contexts))

    async def ascore_stream(
        self,
        instructions: Sequence[Any],
        responses: Sequence[Any] | None = None,
        contexts: Sequence[Any] | None = None,
    ) -> AsyncIterator[tuple[int, FlipResult]]:
        """Yield ``(index, result)`` as each item finishes (for progress and resumable output)."""
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
            return i, await self.ascore_one(instructions[i], resp, ctx, where=f"item {i}")

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
        base = {"method": self.method, "model": self.backend.model_id}
        try:
            instr, resp, ctx = prepare_item(instruction, response, context, infer=self.infer, where=where)
        except InputError as exc:
            return FlipResult(reward=None, error=str(exc), **base)
        template = self.contextual_template if ctx is not None else self.template
        resp, truncated = truncate_middle(resp, HARD_MAX_RESPONSE_CHARS)
        if self.max_response_chars:
            resp, cut = truncate_middle(resp, self.max_response_chars)
            truncated = truncated or cut
        masked = 0
        if self.mask_echo:
            resp, masked = mask_instruction_echo(resp, instr, min_words=self.echo_min_words)
        t0 = time.perf_counter()
        try:
            comp, truncated = await self._generate_fitting(template, instr, resp, ctx, truncated)
        except FlipError as exc:
            return FlipResult(
                reward=None, error=f"{where}: {type(exc).__name__}: {exc}",
                template=template.name, truncated=truncated, latency_s=time.perf_counter() - t0,
                **base,
            )
        res = (
            self._likelihood_result(comp, instr) if self.method == "likelihood"
            else self._f1_result(comp, instr)
        )
        res.template = template.name
        res.truncated = truncated
        if masked:
            res.extra["echo_masked_words"] = masked
        res.latency_s = time.perf_counter() - t0
        return res

    # ---- internals ----------------------------------------------------------------------------

    def _request(self, template: Template, instr: str, resp: str, ctx: str | None) -> GenerateRequest:
        values = {"response": resp}
        if ctx is not None:
            values["context"] = ctx
        if "context" in template.fields and ctx is None:
            values["context"] = "(none)"
        messages = template.render(**values)
        common = dict(
            messages=messages, max_tokens=self.max_tokens, temperature=self.temperature,
            seed=self.seed, top_p=self.top_p,
        )
        if self.method == "likelihood":
            return GenerateRequest(
                **common,
                assistant_prefix='{"INFERRED INSTRUCTION": "',
                forced_text=json.dumps(instr, ensure_ascii=False)[1:-1],
                forced_suffix='"}',
            )
        return GenerateRequest(**common, json_schema=_schema(template) if self.constrained else None)

    async def _generate_fitting(
        self, template: Template, instr: str, resp: str, ctx: str | None, truncated: bool
    ) -> tuple[Completion, bool]:
        """Generate; if the prompt overflows the model's context, cut the response to fit.

        llama.cpp reports the prompt's token count and the window, so each retry shrinks the
        response in proportion to the overflow (the template's own tokens stay fixed, hence a
        few rounds at most).
        """
        cacheable = None if self.method == "likelihood" else (lambda c: parse_flip(c.text).ok)
        for _ in range(4):
            req = self._request(template, instr, resp, ctx)
            try:
                return await self.engine.generate(req, cacheable=cacheable), truncated
            except BackendError as exc:
                m = _OVERFLOW.search(str(exc))
                if not m or len(resp) <= 64:
                    raise
                n_prompt, n_ctx = int(m.group(1)), int(m.group(2))
                extra = self.max_tokens if self.method == "f1" else 2 * len(instr) // 3
                room = max(n_ctx - extra - 16, 1)
                resp, _ = truncate_middle(resp, max(int(len(resp) * room / n_prompt * 0.9), 64))
                truncated = True
        raise BackendError("the prompt does not fit the model's context even with the response cut")

    def _f1_result(self, comp: Completion, instr: str) -> FlipResult:
        parsed = parse_flip(comp.text)
        res = FlipResult(
            reward=None, raw_output=comp.text, reasoning=parsed.reasoning, parse_ok=parsed.ok,
            method="f1", model=self.backend.model_id, prompt_tokens=comp.prompt_tokens,
            completion_tokens=comp.completion_tokens, cached=comp.from_cache,
        )
        if parsed.ok:
            assert parsed.value is not None
            res.inferred_instruction = parsed.value
            sim = self.similarity(parsed.value, instr)
            res.reward, res.precision, res.recall = sim.f1, sim.precision, sim.recall
            return res
        reason = parsed.error or "unparseable output"
        if comp.finish_reason == "length":
            reason += f" (output cut at max_tokens={self.max_tokens})"
        res.parse_error = reason
        if self.parse_failure == "raw":
            sim = self.similarity(clean_output(comp.text), instr)
            res.reward, res.precision, res.recall = sim.f1, sim.precision, sim.recall
        elif self.parse_failure == "zero":
            res.reward, res.precision, res.recall = 0.0, 0.0, 0.0
        else:
            res.error = f"parse failure: {reason}"
        return res

    def _likelihood_result(self, comp: Completion, instr: str) -> FlipResult:
        res = FlipResult(
            reward=None, raw_output=comp.text, method="likelihood", model=self.backend.model_id,
            prompt_tokens=comp.prompt_tokens, completion_tokens=comp.completion_tokens,
            cached=comp.from_cache, inferred_instruction=None,
        )
        forced = json.dumps(instr, ensure_ascii=False)[1:-1]
        lps = comp.token_logprobs or []
        used, seen = [], 0
        for tok, lp in lps:
            if seen >= len(forced):
                break  # the closing '"}' and end-of-turn are not part of the instruction
            used.append(lp)
            seen += len(tok)
        if not used:
            res.error = "likelihood: the backend returned no token log-probabilities"
            return res
        mean = sum(used) / len(used)
        res.logprob = mean
        res.reward = math.exp(mean)
        res.parse_ok = True
        return res

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
