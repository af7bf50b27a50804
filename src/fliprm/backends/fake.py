"""A scripted backend for fast unit tests of parsing and bookkeeping. Never a stand-in for a
real model in an end-to-end test."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any, Union

from .._types import Completion, GenerateRequest
from ..errors import BackendError

__all__ = ["FakeBackend", "scripted_reply"]

Reply = Union[str, Completion, BackendError]


class FakeBackend:
    """Replies from a list (in order, cycling is an error) or a function of the request.

    Every request is recorded in :attr:`calls`.

    >>> import asyncio
    >>> fb = FakeBackend(['{"INFERRED INSTRUCTION": "Say hi."}'])
    >>> asyncio.run(fb.generate(GenerateRequest(messages=()))).text
    '{"INFERRED INSTRUCTION": "Say hi."}'
    """

    name = "fake"
    supports_json_schema = True
    supports_forced_decoding = True

    def __init__(
        self,
        replies: Iterable[Reply] | Callable[[GenerateRequest], Reply] | None = None,
        *,
        model_id: str = "fake",
        max_concurrency: int = 8,
        delay_s: float = 0.0,
    ) -> None:
        if replies is None:
            # ``FlipReward("fake")`` / ``-b fake``: a deterministic dry run that answers every
            # judge's JSON schema (its verdicts are arbitrary: never a stand-in for a model)
            replies = scripted_reply
            model_id = "fake-eval" if model_id == "fake" else model_id
            # FLIPRM_FAKE_DELAY_S: seconds each call sleeps, so tests of a served ``-b fake``
            # (``fliprm serve`` in a subprocess) can have requests in flight
            delay_s = delay_s or float(os.environ.get("FLIPRM_FAKE_DELAY_S") or 0)
        self._fn = replies if callable(replies) else None
        self._queue = None if callable(replies) else list(replies)
        self.model_id = model_id
        self.max_concurrency = max_concurrency
        self.delay_s = delay_s
        self.calls: list[GenerateRequest] = []

    @property
    def cache_identity(self) -> dict[str, object]:
        return {"model": self.model_id}

    async def generate(self, request: GenerateRequest) -> Completion:
        self.calls.append(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self._fn is not None:
            reply = self._fn(request)
        else:
            assert self._queue is not None
            if not self._queue:
                raise AssertionError("FakeBackend ran out of scripted replies")
            reply = self._queue.pop(0)
        if isinstance(reply, BackendError):
            raise reply
        if isinstance(reply, Completion):
            return reply
        return Completion(text=reply, prompt_tokens=10, completion_tokens=len(reply.split()))

    async def aclose(self) -> None:
        return None


def scripted_reply(req: GenerateRequest) -> Completion:
    """The default scripted answer: valid JSON for whichever judge asked (FLIP or a baseline).

    Module level (not a closure) so it pickles by reference into Ray actors.
    """
    text = req.messages[-1]["content"]
    if req.forced_text is not None:
        return _scripted_forcing(req, text)
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


def _scripted_forcing(req: GenerateRequest, prompt: str) -> Completion:
    """Teacher forcing for a dry run: a forced word the prompt contains costs -1 nat, any other
    -3, so a response that names the instruction's words scores higher (likelihood, pmi) and
    an empty response gives the baseline. Arbitrary numbers, never a model's."""
    seen = set(re.findall(r"\w+", prompt.lower()))
    forced = req.forced_text or ""
    tokens = [(w, -1.0 if w.strip().lower() in seen else -3.0)
              for w in re.findall(r"\s*\S+", forced)]
    tokens += [(req.forced_suffix, -0.1)] if req.forced_suffix else []
    text = (req.assistant_prefix or "") + forced + req.forced_suffix
    return Completion(text=text, prompt_tokens=len(prompt) // 4, completion_tokens=len(tokens),
                      token_logprobs=tokens)
