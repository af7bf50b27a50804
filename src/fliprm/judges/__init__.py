"""Judges: rank the candidate answers to one instruction behind one interface.

``await judge.arank(instruction, candidates) -> Judgment``. Built-ins: ``flip`` (backward
inference), the paper's prompted baselines ``pointwise``, ``pairwise`` and ``listwise``, and
``longest`` (a no-model length baseline).

>>> from fliprm.backends.fake import FakeBackend
>>> get_judge("pointwise", backend=FakeBackend(lambda r: '{"SCORE": 3}')).name
'pointwise'
"""

from __future__ import annotations

from typing import Any

from ..backends import Backend
from ..errors import ConfigError
from ._base import Judge, Judgment, LMJudge, top_indices
from .flip import FlipJudge
from .listwise import ListwiseJudge, format_list
from .longest import LongestJudge
from .pairwise import PairwiseJudge
from .pointwise import PointwiseJudge

__all__ = [
    "JUDGES",
    "FlipJudge",
    "Judge",
    "Judgment",
    "LMJudge",
    "ListwiseJudge",
    "LongestJudge",
    "PairwiseJudge",
    "PointwiseJudge",
    "format_list",
    "get_judge",
    "top_indices",
]

JUDGES: dict[str, type] = {
    "flip": FlipJudge,
    "flip-likelihood": FlipJudge,
    "flip-pmi": FlipJudge,
    "pointwise": PointwiseJudge,
    "pairwise": PairwiseJudge,
    "listwise": ListwiseJudge,
    "longest": LongestJudge,
}


def get_judge(name: str, backend: Backend | str = "embedded", **options: Any) -> Judge:
    """Build a judge by name. ``options`` go to its constructor (``engine`` or ``runtime``,
    ``config``, ``template``, ``seed``). ``flip`` scores with ``config.method`` as given (F1 by default),
    ``flip-likelihood`` and ``flip-pmi`` with those methods.

    >>> get_judge("longest").name
    'longest'
    """
    try:
        cls = JUDGES[name]
    except KeyError:
        raise ConfigError(f"unknown judge {name!r}; choose from {', '.join(JUDGES)}") from None
    if cls is LongestJudge:
        return LongestJudge(seed=options.get("seed", 0))
    if name in ("flip-likelihood", "flip-pmi"):
        options["method"] = name.removeprefix("flip-")
    elif name == "flip":
        options.setdefault("method", "f1")
    return cls(backend, **options)
