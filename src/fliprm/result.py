"""What scoring one item returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ErrorKind

__all__ = ["FlipResult"]


@dataclass
class FlipResult:
    """One scored (instruction, response) pair.

    ``reward`` is None only when the item failed (``error`` says why). For the F1 method it is
    the word F1 of the inferred instruction against the real one; for the likelihood method it
    is ``exp(logprob)``, the per-token geometric-mean probability of the real instruction.

    ``error_kind`` says what kind of failure ``error`` is, one of
    :data:`~fliprm.errors.ErrorKind` (``bad_input``, ``backend``, ``timeout``, ``overflow``,
    ``parse``, ``internal``); None when the item scored. Records written before it existed
    have no such field and still read.

    >>> FlipResult(reward=None, error="item 0: field 'response' is missing",
    ...            error_kind="bad_input").ok
    False
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
    error_kind: ErrorKind | None = None
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
