"""What every judge returns, and the plumbing the LM judges share.

A judge ranks the candidate answers to one instruction. Score-based judges (FLIP, pointwise,
pairwise win counts, longest) give every candidate a number; the listwise judge only names a
winner. Either way the result is a :class:`Judgment` whose ``top`` lists every candidate tied at
the top, so RewardBench 2's rule (a k-way tie that includes the chosen answer earns 1/k) and a
reranker's tie-break both read the same field.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from .._types import REASONING_MAX_CHARS, Completion, GenerateRequest
from ..backends import Backend, get_backend
from ..config import SCORING_VERSION, RewardConfig, RuntimeOptions
from ..engine import Engine
from ..errors import FlipError, error_kind
from ..templates import Template, get_template

__all__ = ["Judge", "Judgment", "LMJudge", "top_indices"]


@dataclass
class Judgment:
    """One judge's verdict on the candidates for one instruction.

    Attributes:
        scores: one per candidate, higher is better; None = no usable score for it.
        top: indices of every candidate tied at the best score. An unusable verdict (nothing
            parsed) puts *all* candidates here: a k-way tie, so RewardBench 2 credits 1/k.
        pick: one index from ``top`` after a seeded tie-break (None only with no candidates).
        parse_failures: calls whose answer could not be parsed.
        calls: LM calls made; prompt_tokens, completion_tokens: their cost; seconds: wall time.
        failed_calls: calls that raised (backend down, timeout after the retries): the verdict
            is then incomplete, so evaluations record the item as failed, not as a tie.
        errors: one message per failed call (and, for FLIP, per unusable answer).
        error_kinds: the :data:`~fliprm.errors.ErrorKind` of each of ``errors``.
        details: per-method extras (raw answers, pair outcomes, the shown order, ...).
    """

    scores: list[float | None]
    top: list[int]
    pick: int | None
    parse_failures: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    failed_calls: int = 0
    errors: list[str] = field(default_factory=list)
    error_kinds: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Some call failed: the scores are incomplete (an error record, redone on retry)."""
        return self.failed_calls > 0

    @property
    def tie(self) -> bool:
        """More than one candidate shares the top."""
        return len(self.top) > 1

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Judge(Protocol):
    """Anything that ranks candidate answers to one instruction."""

    name: str

    async def arank(self, instruction: str, candidates: list[str]) -> Judgment: ...

    def identity(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def top_indices(scores: Sequence[float | None]) -> list[int]:
    """Indices tied at the maximum; None ranks below every number; all None -> all tied.

    >>> top_indices([0.5, None, 0.5, 0.1])
    [0, 2]
    >>> top_indices([None, None])
    [0, 1]
    """
    valid = [s for s in scores if s is not None]
    if not valid:
        return list(range(len(scores)))
    best = max(valid)
    return [i for i, s in enumerate(scores) if s is not None and s == best]


def item_rng(seed: int | None, instruction: str, *extra: object) -> random.Random:
    """A generator that depends only on (seed, instruction): reruns repeat every shuffle."""
    # str seeds go through sha512 in `random`, so this is stable across processes
    return random.Random(f"{seed}|{instruction}|{'|'.join(map(str, extra))}")


def finish(judgment: Judgment, rng: random.Random, t0: float) -> Judgment:
    """Fill ``pick`` with a seeded choice among ``top`` and stamp the wall time."""
    if judgment.top:
        judgment.pick = judgment.top[0] if len(judgment.top) == 1 else rng.choice(judgment.top)
    judgment.seconds = time.perf_counter() - t0
    return judgment


class LMJudge:
    """Shared base of the prompted judges: one Engine, one template, JSON-constrained calls.

    Subclasses build the messages and parse the answers; this class owns decoding options,
    schema constraints and cost accounting. Calls go through :meth:`Engine.generate`, the same
    path FlipReward uses, so retries, concurrency caps and the cache behave identically: pass a
    shared ``engine``, or ``runtime`` (:class:`~fliprm.config.RuntimeOptions`) for one built by
    :meth:`Engine.from_runtime`.
    """

    name = "lm"
    default_template = ""

    def __init__(
        self,
        backend: Backend | str = "embedded",
        *,
        engine: Engine | None = None,
        config: RewardConfig | None = None,
        runtime: RuntimeOptions | None = None,
        template: Template | str | None = None,
        seed: int | None = 0,
    ) -> None:
        self.config = config or RewardConfig()
        self.engine = engine or Engine.from_runtime(get_backend(backend),
                                                    runtime or RuntimeOptions())
        self.backend = self.engine.backend
        self.template = get_template(template or self.default_template)
        # the decoding and truncation settings of the shared reward definition
        self.max_tokens = self.config.max_tokens
        self.temperature = self.config.temperature
        self.seed = seed
        self.constrained = self.config.constrained and self.backend.supports_json_schema
        self.max_response_chars = self.config.max_response_chars

    def identity(self) -> dict[str, Any]:
        """Every setting that changes this judge's verdicts (recorded next to eval outputs)."""
        return {"judge": self.name, "template": {"name": self.template.name,
                                                 "sha256": self.template.sha256[:16]},
                "max_tokens": self.max_tokens, "temperature": self.temperature,
                "constrained": self.constrained, "max_response_chars": self.max_response_chars,
                "model_id": self.backend.model_id, "scoring_version": SCORING_VERSION}

    def _schema(self, answer: dict[str, Any]) -> dict[str, Any] | None:
        if not self.constrained:
            return None
        props: dict[str, Any] = {}
        if "REASONING" in self.template.system + self.template.user:
            props["REASONING"] = {"type": "string", "maxLength": REASONING_MAX_CHARS}
        props.update(answer)
        return {"type": "object", "properties": props, "required": list(props),
                "additionalProperties": False}

    def _clip(self, text: str) -> str:
        from ..reward import truncate_middle

        return truncate_middle(text, self.max_response_chars)[0] if self.max_response_chars else text

    async def _call(
        self, judgment: Judgment, answer_schema: dict[str, Any], **values: str
    ) -> str | None:
        """Render, generate, account for the cost; the raw text, or None if the call failed."""
        req = GenerateRequest(
            messages=self.template.render(**values), max_tokens=self.max_tokens,
            temperature=self.temperature, seed=self.seed, json_schema=self._schema(answer_schema),
        )
        judgment.calls += 1
        try:
            comp: Completion = await self.engine.generate(req)
        except FlipError as exc:
            judgment.failed_calls += 1
            judgment.errors.append(f"{type(exc).__name__}: {exc}")
            judgment.error_kinds.append(error_kind(exc))
            return None
        judgment.prompt_tokens += comp.prompt_tokens
        judgment.completion_tokens += comp.completion_tokens
        return comp.text

    async def aclose(self) -> None:
        await self.backend.aclose()
