"""Turning user input into (instruction, response, context) triples, with errors that name
the item and the field."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InputError

__all__ = ["Item", "format_context", "prepare_item", "require_text", "split_conversation"]

Item = tuple[str, str, str | None]

_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(value: str, field: str, where: str) -> None:
    bad = _SURROGATE.search(value)
    if bad:
        # e.g. a JSON "\ud800" escape: no backend, cache key or output file can encode it
        raise InputError(
            f"field {field!r} is not valid Unicode (lone surrogate at character {bad.start()})",
            where=where
        )


def require_text(value: Any, field: str, where: str, *, allow_empty: bool = False) -> str:
    """``value`` as scoreable text, or an :class:`InputError` naming ``where`` and ``field``.

    >>> require_text("Hi", "response", "item 3")
    'Hi'
    >>> require_text(7, "response", "item 3")
    Traceback (most recent call last):
    ...
    fliprm.errors.InputError: item 3: field 'response' must be a string, got int
    """
    if value is None:
        raise InputError(f"field {field!r} is missing (null)", where=where)
    if not isinstance(value, str):
        raise InputError(f"field {field!r} must be a string, got {type(value).__name__}", where=where)
    # C runtimes stop at NUL; drop it rather than silently score a cut-off text.
    value = value.replace("\x00", "")
    _check_unicode(value, field, where)
    if not allow_empty and not value.strip():
        raise InputError(f"field {field!r} is empty", where=where)
    return value


def _messages(value: Any, field: str, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise InputError(f"field {field!r} must be a list of chat messages", where=where)
    for j, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InputError(f"{field}[{j}] must be an object with 'role' and 'content'", where=where)
        for key in ("role", "content"):
            if not isinstance(m[key], str):
                raise InputError(f"{field}[{j}].{key} must be a string", where=where)
        for key, v in m.items():  # every text field (name, tool ids, ...), not just the two used
            if isinstance(v, str):
                _check_unicode(v, f"{field}[{j}].{key}", where)
    return list(value)


def format_context(messages: Sequence[Mapping[str, Any]]) -> str:
    """Earlier turns as ``role: content`` blocks (the whole content, newlines kept)."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def split_conversation(
    messages: Sequence[Mapping[str, Any]], *, infer: str = "user", where: str = "item"
) -> tuple[str, str | None, str | None]:
    """Split chat messages into (instruction, context, trailing assistant reply or None).

    ``infer="user"``: the instruction is the *whole* last user turn; earlier turns are context.
    ``infer="system"``: the instruction is the system prompt and the user turns are context
    (the paper's system-prompt setting).

    >>> split_conversation([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
    ...                     {"role": "user", "content": "Line 1\\nLine 2"}])
    ('Line 1\\nLine 2', 'user: Hi\\n\\nassistant: Yo', None)
    """
    msgs = list(messages)
    reply = None
    if msgs and msgs[-1]["role"] == "assistant":
        reply = msgs[-1]["content"]
        msgs = msgs[:-1]
    if infer == "system":
        sys_idx = [i for i, m in enumerate(msgs) if m["role"] == "system"]
        if not sys_idx:
            raise InputError("infer='system' but the messages have no system turn", where=where)
        instruction = msgs[sys_idx[-1]]["content"]
        rest = [m for i, m in enumerate(msgs) if i != sys_idx[-1]]
        return instruction, (format_context(rest) or None), reply
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        raise InputError("the messages have no user turn", where=where)
    last = users[-1]
    return msgs[last]["content"], (format_context(msgs[:last]) or None), reply


def prepare_item(
    instruction: Any, response: Any, context: Any = None, *, infer: str = "user", where: str = "item"
) -> Item:
    """Validate one input and return (instruction, response, context)."""
    reply = None
    if not isinstance(instruction, (list, tuple)):
        instr = require_text(instruction, "instruction", where)
    else:
        msgs = _messages(instruction, "messages", where)
        instr, conv_ctx, reply = split_conversation(msgs, infer=infer, where=where)
        instr = require_text(instr, "instruction", where)
        if context is None:
            context = conv_ctx
    if response is None and reply is not None:
        response = reply
    resp = require_text(response, "response", where)
    ctx: str | None
    if context is None:
        ctx = None
    elif isinstance(context, str):
        ctx = require_text(context, "context", where, allow_empty=True) or None
    else:
        ctx = format_context(_messages(context, "context", where)) or None
    return instr, resp, ctx
