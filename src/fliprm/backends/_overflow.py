"""A server's "the prompt does not fit" reply, read once at the backend boundary into a
:class:`~fliprm.errors.ContextOverflow`, so nothing past the backends reads error messages.

Shapes understood (recorded replies in ``tests/fixtures/overflow/``):

* llama.cpp (``llama-server`` and the embedded runtime): ``{"error": {"type":
  "exceed_context_size_error", "n_prompt_tokens": N, "n_ctx": M, "message": ...}}``; the counts
  are fields of the reply.
* vLLM (and SGLang), HTTP 400: ``{"error": {"message": "This model's maximum context length is
  M tokens. However, your request has N input tokens. ...", "type": "BadRequestError"}}`` (or
  the older top-level ``{"object": "error", "message": ...}``). vLLM gives the counts only in
  its message, so they are read from it here, the one place that does.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import ContextOverflow

__all__ = ["context_overflow"]

#: vLLM's and SGLang's wordings of the window and of the prompt's size (any version seen)
_WINDOW = re.compile(r"maximum context length (?:is|of) (\d+) tokens")
_PROMPT = re.compile(
    r"request has (\d+) input tokens"                    # vLLM >= 0.10
    r"|\((\d+) in the messages"                          # vLLM < 0.10, with max_tokens
    r"|requested (\d+) tokens in the messages"           # vLLM < 0.10, without
    r"|(\d+) tokens from the input messages"             # SGLang
)


def _error_object(reply: Any) -> dict[str, Any] | None:
    if not isinstance(reply, dict):
        return None
    err = reply.get("error")
    if isinstance(err, dict):
        return err
    return reply if reply.get("object") == "error" or "message" in reply else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def context_overflow(reply: Any, *, where: str = "") -> ContextOverflow | None:
    """The :class:`ContextOverflow` a server's error reply describes, or None for any other
    reply. ``where`` (e.g. the server's URL) starts the message.

    >>> context_overflow({"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 9000,
    ...                             "n_ctx": 8192, "message": "request too long"}}).n_prompt
    9000
    >>> exc = context_overflow({"object": "error", "message": "This model's maximum context "
    ...     "length is 4096 tokens. However, your request has 5000 input tokens."})
    >>> exc.n_prompt, exc.n_ctx
    (5000, 4096)
    >>> context_overflow({"error": {"message": "unknown model", "type": "BadRequestError"}})
    """
    err = _error_object(reply)
    if err is None:
        return None
    message = str(err.get("message", ""))
    lead = f"{where}: " if where else ""
    if err.get("type") == "exceed_context_size_error":
        return ContextOverflow(_count(err.get("n_prompt_tokens")), _count(err.get("n_ctx")),
                               f"{lead}{message or 'the prompt exceeds the context size'}")
    window = _WINDOW.search(message)
    if window is None:
        return None
    prompt = _PROMPT.search(message)
    n_prompt = next((int(g) for g in prompt.groups() if g), None) if prompt else None
    return ContextOverflow(n_prompt, int(window.group(1)), f"{lead}{message}")
