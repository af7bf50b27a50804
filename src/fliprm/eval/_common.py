"""Pieces shared by the RewardBench 2 runner and the best-of-N reranker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .._types import Completion, GenerateRequest
from ..backends import Backend
from ..engine import Engine
from ..judges import Judge, get_judge

__all__ = ["JudgeFactory", "fake_eval_backend", "fake_eval_reply", "judge_factory", "words"]

JudgeFactory = Callable[[str, int], Judge]


def words(text: str) -> int:
    return len(text.split())


def judge_factory(
    backend: Backend,
    *,
    max_tokens: int = 512,
    temperature: float = 0.0,
    max_response_chars: int | None = None,
    judge_options: dict[str, dict[str, Any]] | None = None,
) -> JudgeFactory:
    """``make(method, seed) -> Judge``; every judge shares one Engine over ``backend``.

    >>> from fliprm.backends.fake import FakeBackend
    >>> make = judge_factory(FakeBackend([]))
    >>> make("pointwise", 1).engine is make("listwise", 2).engine
    True
    """
    engine = Engine(backend)
    common = {"max_tokens": max_tokens, "temperature": temperature,
              "max_response_chars": max_response_chars}

    def make(method: str, seed: int) -> Judge:
        opts = {**common, **(judge_options or {}).get(method, {})}
        return get_judge(method, backend=backend, engine=engine, seed=seed, **opts)

    return make


def fake_eval_reply(req: GenerateRequest) -> Completion:
    """The scripted answer of :func:`fake_eval_backend`: valid JSON for whichever judge asked.

    Module level (not a closure) so it pickles by reference into Ray actors.
    """
    text = req.messages[-1]["content"]
    props = (req.json_schema or {}).get("properties", {})
    n = len(text)
    answer: dict[str, Any] = {"REASONING": "scripted"}
    if "SCORE" in props:
        answer["SCORE"] = 1 + n % 10
    elif "BETTER_RESPONSE" in props:
        answer["BETTER_RESPONSE"] = "AB"[n % 2]
    elif "BEST_RESPONSE_INDEX" in props:
        answer["BEST_RESPONSE_INDEX"] = n % (props["BEST_RESPONSE_INDEX"].get("maximum", 0) + 1)
    else:
        answer["INFERRED INSTRUCTION"] = " ".join(text.split()[-12:])
    out = json.dumps(answer)
    return Completion(text=out, prompt_tokens=n // 4, completion_tokens=len(out) // 4)


def fake_eval_backend() -> Backend:
    """A deterministic scripted backend that answers every judge's JSON schema (for CLI smoke
    tests and dry runs only: its verdicts are arbitrary, never a stand-in for a model)."""
    from ..backends.fake import FakeBackend

    return FakeBackend(fake_eval_reply, model_id="fake-eval")
