"""Tolerant extraction of a judge's JSON answer. Pure functions, no I/O.

Small models wrap JSON in code fences or prose, think aloud in ``<think>`` tags, double their
braces, leave raw newlines or unescaped quotes inside strings. :func:`extract_json` tries, in
order: the whole text, each ``{`` position with a raw decoder, the same with ``{{``/``}}`` undone,
and finally a key-by-key scan that tolerates unescaped quotes. Keys are matched by alias, ignoring
case, spaces, underscores and dashes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INSTRUCTION_KEYS",
    "REASONING_KEYS",
    "Parsed",
    "clean_output",
    "extract_json",
    "get_field",
    "parse_flip",
]

INSTRUCTION_KEYS = (
    "inferred instruction",
    "inferredinstruction",
    "instruction",
    "inferred prompt",
    "inferred query",
    "reconstructed instruction",
)
REASONING_KEYS = ("reasoning", "reason", "rationale", "explanation", "thoughts", "thought")

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_UNCLOSED_THINK = re.compile(r"^.*</think>", re.DOTALL | re.IGNORECASE)
_ANSWER_TAGS = re.compile(r"</?answer>", re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A parsed answer: ``ok`` is False when the wanted field could not be found."""

    value: str | None
    reasoning: str | None
    ok: bool
    error: str | None = None
    data: dict[str, Any] | None = None


def _key(k: str) -> str:
    return re.sub(r"[\s_\-]+", "", k).lower()


def clean_output(text: str) -> str:
    """Drop ``<think>`` blocks, ``<answer>`` tags and code fences; keep everything else."""
    text = _THINK.sub("", text)
    if re.search(r"</think>", text, re.IGNORECASE):  # an opening tag the server already stripped
        text = _UNCLOSED_THINK.sub("", text)
    text = _ANSWER_TAGS.sub("", text)
    fenced = _FENCE.findall(text)
    if fenced:
        text = "\n".join(fenced)
    return text.strip()


def _decode_objects(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder(strict=False)  # strict=False: raw newlines inside strings
    found = []
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            found.append(obj)
    return found


def _scan_fields(text: str) -> dict[str, Any]:
    """Last resort: ``"KEY": "value"`` pairs where the value may hold unescaped quotes.

    A value runs to the quote that is followed by ``,"`` + next key, or by the closing brace.
    """
    out: dict[str, Any] = {}
    keys = list(re.finditer(r'"([^"\n]{1,40})"\s*:\s*', text))
    for i, m in enumerate(keys):
        start = m.end()
        end = keys[i + 1].start() if i + 1 < len(keys) else len(text)
        chunk = text[start:end].strip()
        chunk = re.sub(r"[,}\s]*$", "", chunk) if i + 1 < len(keys) else chunk.rstrip().rstrip("}")
        chunk = chunk.rstrip().rstrip(",").strip()
        if chunk.startswith('"') and chunk.endswith('"') and len(chunk) >= 2:
            out[m.group(1)] = chunk[1:-1].replace('\\"', '"').replace("\\n", "\n")
        elif chunk:
            try:
                out[m.group(1)] = json.loads(chunk)
            except ValueError:
                out[m.group(1)] = chunk
    return out


def extract_json(text: str) -> dict[str, Any] | None:
    """The best JSON object in a model's output, or None.

    >>> extract_json('Sure! ```json\\n{"SCORE": 7}\\n```')
    {'SCORE': 7}
    """
    text = clean_output(text)
    candidates = [text]
    if "{{" in text or "}}" in text:
        candidates.append(text.replace("{{", "{").replace("}}", "}"))
    for cand in candidates:
        objs = _decode_objects(cand)
        if objs:
            # The widest object is the answer; inner ones are nested values.
            return max(objs, key=lambda o: len(o))
    for cand in candidates:
        fields = _scan_fields(cand)
        if fields:
            return fields
    return None


def get_field(data: dict[str, Any] | None, aliases: tuple[str, ...]) -> Any:
    """The value of the first alias present in ``data`` (matching ignores case and separators)."""
    if not data:
        return None
    by_key = {_key(k): v for k, v in data.items()}
    for alias in aliases:
        if _key(alias) in by_key:
            return by_key[_key(alias)]
    return None


def parse_flip(text: str) -> Parsed:
    """Parse a FLIP answer into the inferred instruction and the reasoning.

    >>> parse_flip('{"REASONING": "r", "INFERRED INSTRUCTION": "Name a color."}').value
    'Name a color.'
    """
    data = extract_json(text)
    if data is None:
        return Parsed(None, None, False, "no JSON object in the output")
    value = get_field(data, INSTRUCTION_KEYS)
    reasoning = get_field(data, REASONING_KEYS)
    reasoning = None if reasoning is None else str(reasoning)
    if value is None:
        return Parsed(None, reasoning, False, "JSON has no inferred-instruction key", data)
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if not value.strip():
        return Parsed(None, reasoning, False, "inferred instruction is empty", data)
    return Parsed(value.strip(), reasoning, True, None, data)
