"""Value types shared by every layer: what is sent to an LM and what comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypedDict

__all__ = ["Completion", "GenerateRequest", "Message"]


class Message(TypedDict):
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One chat call. Backends translate it to their wire format and do nothing else.

    ``forced_text`` asks for teacher forcing: the reply is constrained to exactly
    ``assistant_prefix + forced_text + forced_suffix`` and the per-token log-probabilities of
    the forced part come back in :attr:`Completion.token_logprobs` (used by the likelihood
    method). ``json_schema`` asks for output constrained to a JSON schema. With an
    ``assistant_prefix`` the reply continues that assistant message, and
    :attr:`Completion.text` holds only the continuation.
    """

    messages: tuple[Message, ...]
    max_tokens: int = 512
    temperature: float = 0.0
    seed: int | None = None
    top_p: float | None = None
    json_schema: dict[str, Any] | None = None
    assistant_prefix: str | None = None
    forced_text: str | None = None
    forced_suffix: str = ""
    #: a GBNF grammar for the reply (llama.cpp); used to continue an ``assistant_prefix``
    grammar: str | None = None


@dataclass(slots=True)
class Completion:
    """What an LM call returned, with its cost."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    latency_s: float = 0.0
    #: time the backend itself reports for prefill + decode (llama.cpp ``timings``), if any
    backend_s: float | None = None
    #: tokens served from the backend's prompt cache (prefix reuse), if reported
    cached_prompt_tokens: int | None = None
    #: (token text, logprob) for each generated token, when requested
    token_logprobs: list[tuple[str, float]] | None = None
    #: served from fliprm's response cache, not the backend
    from_cache: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# Upper bounds on a constrained answer's REASONING field. A small model otherwise "reasons" by
# summarising a long response until max_tokens cuts the JSON off (measured with the embedded
# 0.5B model: 18 of 32 calls on AlpacaEval answers failed to parse without a cap).
# A judge's verdict is a constrained number, so a short cap only trims its reasoning.
REASONING_MAX_CHARS = 200
# FLIP's cap bounds the cost of the reasoning. A cap alone closes the string mid-sentence and the
# model then finishes its sentence inside INFERRED INSTRUCTION (", and the response should..."),
# so when a reasoning reaches the cap, fliprm cuts it back to its last full sentence and asks
# again for the instruction alone (see fliprm.methods.F1Method).
FLIP_REASONING_MAX_CHARS = 600
