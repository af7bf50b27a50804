"""Scoring methods: how one prepared item becomes a :class:`~fliprm.reward.FlipResult`.

A method is a strategy object with one coroutine, ``run(runner, item)``. It builds requests,
asks the runner to generate them (the runner owns the engine, the cache and the cut-to-fit
logic) and turns completions into a result. :class:`PMIMethod` (the default) scores how much
the response raises the real instruction's log-probability over an empty response;
:class:`LikelihoodMethod` teacher-forces the real instruction and scores its mean
log-probability; :class:`F1Method` is the paper's backward inference + word F1 (with
``samples`` > 1: the mean over seeded samples). With ``explain``, the likelihood methods also
run the F1 method's generation and attach its inferred instruction, leaving the reward as is.

>>> get_method(RewardConfig()).name
'pmi'
>>> get_method(RewardConfig(method="likelihood")).name
'likelihood'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import statistics
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from ._types import FLIP_REASONING_MAX_CHARS, Completion, GenerateRequest
from .config import RewardConfig
from .errors import BackendError
from .parse import clean_output, parse_flip
from .registry import method_spec, register_method
from .result import FlipResult
from .similarity import F1, get_similarity
from .templates import Template

__all__ = ["F1Method", "Item", "LikelihoodMethod", "Method", "PMIMethod", "PMIMinMethod", "Runner",
           "get_method"]

INSTRUCTION_KEY = "INFERRED INSTRUCTION"


@dataclass(frozen=True)
class Item:
    """One validated item, ready for a method: text already cut, neutralised and masked."""

    instruction: str
    response: str
    context: str | None
    template: Template
    where: str


Build = Callable[[Item], GenerateRequest]


class Runner(Protocol):
    """What a method may use: generation with cut-to-fit, and the reward's settings."""

    config: RewardConfig

    async def generate(
        self, item: Item, build: Build, *, cacheable: Callable[[Completion], bool] | None
    ) -> tuple[Completion, Item]: ...


class Method(Protocol):
    name: str

    async def run(self, runner: Runner, item: Item) -> FlipResult: ...


def render(item: Item) -> tuple[Any, ...]:
    values = {"response": item.response}
    if item.context is not None or "context" in item.template.fields:
        values["context"] = item.context if item.context is not None else "(none)"
    return item.template.render(**values)


def flip_schema(template: Template) -> dict[str, Any]:
    props: dict[str, Any] = {}
    if "REASONING" in template.system + template.user:
        props["REASONING"] = {"type": "string", "maxLength": FLIP_REASONING_MAX_CHARS}
    props[INSTRUCTION_KEY] = {"type": "string"}
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


# The rest of a JSON string value, then the object's end: continues `..."INFERRED INSTRUCTION": "`.
_STRING_TAIL = (
    'root ::= chars "\\"}"\n'
    'chars ::= ([^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] '
    '[0-9a-fA-F] [0-9a-fA-F]))*\n'
)
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]]|$)")


def capped_reasoning(text: str) -> str:
    """A reasoning the grammar closed at its cap, cut back to whole sentences the model ended
    itself, each kept once.

    The sentence that ran into the cap is dropped even when its last character happens to be
    a full stop ("... a reasonable infer."); a small model that loops repeats its sentences,
    and a looping prefix invites it to loop on into the instruction.

    >>> capped_reasoning("It lists tips. Each tip is short and the")
    'It lists tips.'
    >>> capped_reasoning("It lists tips. It is short. It lists tips. It is sho.")
    'It lists tips. It is short.'
    """
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if ends and ends[-1] >= len(text.rstrip()):
        ends.pop()  # the sentence that reached the cap
    if not ends:
        return ""
    out: list[str] = []
    start = 0
    for end in ends:
        sentence = text[start:end].strip()
        start = end
        if sentence and sentence not in out:
            out.append(sentence)
    return " ".join(out)


@register_method("f1", needs_logprobs=False, supports_samples=True, generates=True,
                 help="the paper: word F1 of the inferred instruction", judge="flip")
class F1Method:
    """Backward inference, then word F1 against the real instruction (the paper's reward).

    * A reply cut at ``max_tokens`` is a parse failure (``parse_ok=False``, with the reason)
      even where the tolerant parser could read a partial value: a cut-off instruction is not
      the model's answer. The parse-failure policy then decides the reward.
    * With a reasoning template and constrained output, REASONING is capped at
      :data:`~fliprm._types.FLIP_REASONING_MAX_CHARS`. A reasoning that reaches the cap was
      closed by the grammar, possibly mid-sentence, and a small model then finishes that
      sentence inside the instruction field. So it is cut back to its last full sentence and
      the instruction is asked for again as the continuation of that JSON prefix (one more
      call on a cached prefix; ``extra["reasoning_recut"]``). The instruction field therefore
      always starts after a reasoning the model ended itself.
    * ``samples`` > 1: that many seeded samples (seed, seed+1, ...); the reward is their mean,
      ``extra["sample_rewards"]`` and ``extra["reward_std"]`` show the spread.
    """

    name = "f1"

    def __init__(self, config: RewardConfig) -> None:
        self.config = config
        self.similarity = get_similarity(config.similarity)

    def _request(self, item: Item, seed: int | None) -> GenerateRequest:
        cfg = self.config
        return GenerateRequest(
            messages=render(item), max_tokens=cfg.max_tokens, temperature=cfg.temperature,
            seed=seed, top_p=cfg.top_p,
            json_schema=flip_schema(item.template) if cfg.constrained else None,
        )

    async def run(self, runner: Runner, item: Item) -> FlipResult:
        k = self.config.samples
        if k == 1:
            return await self._one(runner, item, self.config.seed)
        base = self.config.seed or 0
        results: list[FlipResult] = [await self._one(runner, item, base + i) for i in range(k)]
        scored = [r for r in results if r.reward is not None]
        if not scored:
            return results[0]
        first = results[0]
        rewards = [float(r.reward) for r in scored]  # type: ignore[arg-type]
        # read every sample before the first one's result becomes the mean
        sample_rewards = [r.reward for r in results]
        sample_instructions = [r.inferred_instruction for r in results]
        first.reward = statistics.fmean(rewards)
        first.precision = statistics.fmean(float(r.precision or 0.0) for r in scored)
        first.recall = statistics.fmean(float(r.recall or 0.0) for r in scored)
        first.error = first.error_kind = None
        first.parse_ok = all(r.parse_ok for r in results)
        first.prompt_tokens = sum(r.prompt_tokens for r in results)
        first.completion_tokens = sum(r.completion_tokens for r in results)
        first.cached = all(r.cached for r in results)
        first.extra["sample_rewards"] = sample_rewards
        first.extra["sample_instructions"] = sample_instructions
        first.extra["reward_std"] = statistics.pstdev(rewards)
        return first

    async def _one(self, runner: Runner, item: Item, seed: int | None) -> FlipResult:
        comp, item = await runner.generate(
            item, lambda it: self._request(it, seed), cacheable=self._cacheable
        )
        res = FlipResult(reward=None, raw_output=comp.text, method="f1",
                         prompt_tokens=comp.prompt_tokens,
                         completion_tokens=comp.completion_tokens, cached=comp.from_cache)
        parsed = parse_flip(comp.text)
        # The grammar closed REASONING at its cap (possibly mid-sentence): whatever followed,
        # even an instruction that ran on to max_tokens, continued a cut sentence. Ask again.
        if (parsed.reasoning is not None and self.config.constrained
                and len(parsed.reasoning) >= FLIP_REASONING_MAX_CHARS):
            comp2, text = await self._recut(runner, item, parsed.reasoning, seed)
            res.prompt_tokens += comp2.prompt_tokens
            res.completion_tokens += comp2.completion_tokens
            res.cached = res.cached and comp2.from_cache
            res.raw_output = text
            res.extra["reasoning_recut"] = True
            comp = replace(comp2, text=text)
            parsed = parse_flip(text)
        res.reasoning = parsed.reasoning
        cut = comp.finish_reason == "length"
        if parsed.ok and not cut:
            assert parsed.value is not None
            res.parse_ok = True
            res.inferred_instruction = parsed.value
            self._set(res, self.similarity(parsed.value, item.instruction))
            return res
        reason = parsed.error or "unparseable output"
        if cut:
            reason = f"output cut at max_tokens={self.config.max_tokens}"
            if parsed.ok:
                reason += f" (partial instruction {parsed.value[:80]!r})"  # type: ignore[index]
        res.parse_error = reason
        policy = self.config.parse_failure
        if policy == "raw":
            self._set(res, self.similarity(clean_output(comp.text), item.instruction))
        elif policy == "zero":
            self._set(res, F1(0.0, 0.0, 0.0))
        else:
            res.error = f"{item.where}: parse failure: {reason}"
            res.error_kind = "parse"
        return res

    async def _recut(
        self, runner: Runner, item: Item, reasoning: str, seed: int | None
    ) -> tuple[Completion, str]:
        kept = capped_reasoning(reasoning)
        prefix = ('{"REASONING": ' + json.dumps(kept, ensure_ascii=False) + ', "'
                  + INSTRUCTION_KEY + '": "')
        cfg = self.config

        def build(it: Item) -> GenerateRequest:
            return GenerateRequest(
                messages=render(it), max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                seed=seed, top_p=cfg.top_p, assistant_prefix=prefix, grammar=_STRING_TAIL,
            )

        comp, _ = await runner.generate(item, build, cacheable=lambda c: c.finish_reason != "length")
        tail = comp.text
        if not tail.rstrip().endswith("}"):
            tail = tail + ('"}' if comp.finish_reason != "length" else "")
        return comp, prefix + tail

    @staticmethod
    def _cacheable(comp: Completion) -> bool:
        return comp.finish_reason != "length" and parse_flip(comp.text).ok

    @staticmethod
    def _set(res: FlipResult, sim: F1) -> None:
        res.reward, res.precision, res.recall = sim.f1, sim.precision, sim.recall


@register_method("likelihood", needs_logprobs=True,
                 help="mean log p(instruction | response), teacher-forced")
class LikelihoodMethod:
    """Mean log p(instruction | response), the real instruction teacher-forced as the value of
    ``INFERRED INSTRUCTION``; reward = exp(mean), the per-token geometric-mean probability.
    With ``config.explain`` the result also carries the FLIP generation (see :meth:`_explain`).

    >>> LikelihoodMethod(RewardConfig(method="likelihood", explain=True)).config.explain
    True
    """

    name = "likelihood"

    def __init__(self, config: RewardConfig) -> None:
        self.config = config
        self._same_prompt = KeyedLocks()

    async def _mean_logprob(self, runner: Runner, item: Item) -> tuple[FlipResult, float | None]:
        """A result carrying the cost of one forced call, and the instruction's mean logprob.

        Calls that share a response (one answer scored against several instructions) run one
        after another: the second then starts from the KV state of the first's prompt (system
        prompt + response) instead of reading the response again in another slot. (Baselines,
        with an empty response, share only the system prompt: they go through unqueued.)
        """
        async with self._same_prompt.hold((item.template.sha256, item.context, item.response)):
            return await self._forced(runner, item)

    async def _forced(self, runner: Runner, item: Item) -> tuple[FlipResult, float | None]:
        res, tokens = await self._forced_tokens(runner, item)
        if tokens is None:
            return res, None
        return res, sum(lp for _, lp in tokens) / len(tokens)

    async def _forced_tokens(
        self, runner: Runner, item: Item
    ) -> tuple[FlipResult, list[tuple[str, float]] | None]:
        """One forced call: its result (cost, errors) and the instruction's tokens with their
        log-probabilities (None on an error)."""
        forced = json.dumps(item.instruction, ensure_ascii=False)[1:-1]
        cfg = self.config

        def build(it: Item) -> GenerateRequest:
            return GenerateRequest(
                messages=render(it), max_tokens=cfg.max_tokens, temperature=0.0,
                assistant_prefix='{"' + INSTRUCTION_KEY + '": "', forced_text=forced,
                forced_suffix='"}',
            )

        comp, item = await runner.generate(item, build, cacheable=None)
        res = FlipResult(reward=None, raw_output=comp.text, method=self.name,
                         prompt_tokens=comp.prompt_tokens,
                         completion_tokens=comp.completion_tokens, cached=comp.from_cache)
        used = forced_tokens(comp, forced)
        if not used:
            res.error = f"{item.where}: {self.name}: the backend returned no token log-probabilities"
            res.error_kind = "backend"
            return res, None
        res.extra["forced_tokens"] = len(used)
        return res, used

    async def run(self, runner: Runner, item: Item) -> FlipResult:
        res, mean = await self._mean_logprob(runner, item)
        if mean is not None:
            res.logprob = mean
            res.reward = math.exp(mean)
            res.parse_ok = True
            await self._explain(runner, item, res)
        return res

    async def _explain(self, runner: Runner, item: Item, res: FlipResult) -> None:
        """With ``explain``: the FLIP generation beside the score, so a user sees *why* (the
        instruction the model reads out of the response). It never changes the reward: a
        generation that fails or does not parse is noted in ``extra["explain_error"]``. The
        generation sees only the response, so one response scored against many instructions
        (or a repeated one) is generated once (the engine merges and caches it)."""
        if not self.config.explain:
            return
        try:
            gen = await F1Method(self.config)._one(runner, item, self.config.seed)
        except BackendError as exc:
            # the engine already retried it; the reward stands without its explanation
            res.extra["explain_error"] = f"{type(exc).__name__}: {exc}"
            return
        res.prompt_tokens += gen.prompt_tokens
        res.completion_tokens += gen.completion_tokens
        res.cached = res.cached and gen.cached
        if gen.parse_ok and gen.inferred_instruction is not None:
            res.inferred_instruction = gen.inferred_instruction
            res.reasoning = gen.reasoning
            res.extra["inferred_f1"] = gen.reward
        else:
            res.extra["explain_error"] = gen.parse_error or gen.error or "no inferred instruction"


@register_method("pmi", needs_logprobs=True,
                 help="the instruction's log-likelihood given the response minus given an "
                 "empty response")
class PMIMethod(LikelihoodMethod):
    """How much the response raises the instruction's likelihood: the mean per-token pointwise
    mutual information ``log p(x | y) - log p(x | empty response)`` over the instruction's
    tokens; reward = sigmoid(PMI), so 0.5 means "the response tells nothing about x".

    The raw likelihood favours instructions that are easy to predict whatever the response
    ("What is the boiling point of water at sea level?" was as likely as the true "Give me
    three tips for sleeping better." for a sleep-tips answer); the empty-response baseline
    removes that prior (the surface-form correction of zero-shot scoring, Holtzman et al.
    2021). The baseline depends only on the instruction, so a group of responses to one prompt
    (GRPO, best-of-N) shares one baseline call, and rankings within the group are those of the
    likelihood method. It is the default method (``RewardConfig().method``), with the echo guard.

    >>> PMIMethod(RewardConfig()).name
    'pmi'
    """

    name = "pmi"
    #: baselines kept per reward object (one per instruction and template)
    MEMO_SIZE = 4096

    def __init__(self, config: RewardConfig) -> None:
        super().__init__(config)
        self._memo: OrderedDict[tuple[str, str | None, str], list[float]] = OrderedDict()

    async def _baseline(self, runner: Runner, item: Item, res: FlipResult) -> list[float] | None:
        """The instruction's token log-probabilities after an empty response (memoised per
        instruction and template); its cost is added to ``res``, an error is set on it."""
        key = (item.template.sha256, item.context, item.instruction)
        base = self._memo.get(key)
        if base is None:
            # concurrent items with one instruction also share the call: the engine merges
            # identical requests in flight
            null, tokens = await self._forced_tokens(runner, replace(item, response=""))
            res.prompt_tokens += null.prompt_tokens
            res.completion_tokens += null.completion_tokens
            res.cached = res.cached and null.cached
            if tokens is None:
                res.error, res.error_kind = null.error, null.error_kind
                return None
            base = self._memo[key] = [lp for _, lp in tokens]
            if len(self._memo) > self.MEMO_SIZE:
                self._memo.popitem(last=False)
        return base

    def _pmi(self, tokens: list[tuple[str, float]], base: list[float],
             res: FlipResult) -> float:
        """The pmi the reward is the sigmoid of: mean log p(x | y) minus mean log p(x | empty)."""
        base_mean = sum(base) / len(base)
        res.extra["baseline_logprob"] = base_mean
        return sum(lp for _, lp in tokens) / len(tokens) - base_mean

    async def run(self, runner: Runner, item: Item) -> FlipResult:
        async with self._same_prompt.hold((item.template.sha256, item.context, item.response)):
            res, tokens = await self._forced_tokens(runner, item)
        if tokens is None:
            return res
        base = await self._baseline(runner, item, res)
        if base is None:
            return res
        mean = sum(lp for _, lp in tokens) / len(tokens)
        res.logprob = mean
        res.extra["pmi"] = mean - sum(base) / len(base)
        score = self._pmi(tokens, base, res)
        res.reward = 1.0 / (1.0 + math.exp(-score))
        res.parse_ok = True
        await self._explain(runner, item, res)
        return res


@register_method("pmi-min", needs_logprobs=True,
                 help="pmi of the instruction's worst-explained sentence (experimental)")
class PMIMinMethod(PMIMethod):
    """pmi per sentence of the instruction, reward = sigmoid of the lowest (experimental).

    The mean over all tokens lets a topic every sample matches outweigh a requirement one
    sample ignores ("... in all lowercase."): a response that leaves one part of its
    instruction unexplained should score as that part, not as the average. The tokens and
    both forced calls are those of :class:`PMIMethod` (no extra model call); a sentence ends
    after ``.``, ``!``, ``?`` or a newline, and pieces of fewer than :data:`MIN_TOKENS` tokens
    join the sentence before them (list numbers, "e.g.").

    >>> PMIMinMethod.segments(["Write", " a", " poem", ".", " Use", " no", " commas", "."])
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    """

    name = "pmi-min"
    MIN_TOKENS = 3

    @classmethod
    def segments(cls, pieces: list[str]) -> list[list[int]]:
        out: list[list[int]] = [[]]
        for i, piece in enumerate(pieces):
            out[-1].append(i)
            ends = piece.rstrip().endswith((".", "!", "?")) or "\\n" in piece or "\n" in piece
            if ends and i + 1 < len(pieces):
                out.append([])
        merged: list[list[int]] = []
        for seg in out:
            if merged and len(seg) < cls.MIN_TOKENS:
                merged[-1].extend(seg)
            elif seg:
                merged.append(seg)
        return merged

    def _pmi(self, tokens: list[tuple[str, float]], base: list[float],
             res: FlipResult) -> float:
        cond = [lp for _, lp in tokens]
        if len(base) != len(cond):  # another tokenization at the prefix: one sentence
            return super()._pmi(tokens, base, res)
        res.extra["baseline_logprob"] = sum(base) / len(base)
        pmis = [sum(cond[i] - base[i] for i in seg) / len(seg)
                for seg in self.segments([p for p, _ in tokens])]
        res.extra["sentence_pmi"] = [round(x, 4) for x in pmis]
        return min(pmis)


class KeyedLocks:
    """One :class:`asyncio.Lock` per key and event loop, dropped when nobody holds or waits.

    >>> import asyncio
    >>> locks = KeyedLocks()
    >>> async def twice():
    ...     async with locks.hold("a"):
    ...         return len(locks._locks)
    >>> asyncio.run(twice()), len(locks._locks)
    (1, 0)
    """

    def __init__(self) -> None:
        self._locks: dict[tuple[int, Any], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        k = (id(asyncio.get_running_loop()), key)
        lock, users = self._locks.get(k) or (asyncio.Lock(), 0)
        self._locks[k] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[k]
            if users == 1:
                del self._locks[k]
            else:
                self._locks[k] = (lock, users - 1)


def forced_tokens(comp: Completion, forced: str) -> list[tuple[str, float]]:
    """The tokens that spell ``forced`` with their log-probabilities (the closing ``"}`` and
    the end-of-turn token are not part of the instruction)."""
    used: list[tuple[str, float]] = []
    seen = 0
    for tok, lp in comp.token_logprobs or []:
        if seen >= len(forced):
            break
        used.append((tok, lp))
        seen += len(tok)
    return used


def forced_logprobs(comp: Completion, forced: str) -> list[float]:
    """The log-probabilities of the tokens that spell ``forced`` (see :func:`forced_tokens`)."""
    return [lp for _, lp in forced_tokens(comp, forced)]


def get_method(config: RewardConfig) -> Method:
    """The strategy object for ``config.method`` (``pmi`` by default), from the method registry
    (:mod:`fliprm.registry`).

    >>> get_method(RewardConfig(method="f1")).name
    'f1'
    """
    return method_spec(config.method).factory(config)  # type: ignore[no-any-return]
