"""Judges: rank the candidate answers to one instruction behind one interface.

``await judge.arank(instruction, candidates) -> Judgment``. Built-ins: ``flip`` (backward
inference + word F1), one ``flip-<method>`` per other registered method (``flip-likelihood``,
``flip-pmi``, and a plugin's, see :mod:`fliprm.registry`), the paper's prompted baselines
``pointwise``, ``pairwise`` and ``listwise``, and ``longest`` (a no-model length baseline).

>>> from fliprm.backends.fake import FakeBackend
>>> get_judge("pointwise", backend=FakeBackend(lambda r: '{"SCORE": 3}')).name
'pointwise'
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ..backends import Backend
from ..errors import ConfigError
from ..registry import method_specs
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

_BASELINES: dict[str, type] = {
    "pointwise": PointwiseJudge,
    "pairwise": PairwiseJudge,
    "listwise": ListwiseJudge,
    "longest": LongestJudge,
}


class _Judges(Mapping[str, type]):
    """Judge name -> class: a FLIP judge per registered method (read from the registry at each
    use, so a plugin's method is a judge too), then the baselines."""

    def _table(self) -> dict[str, type]:
        return {**{s.judge: FlipJudge for s in method_specs()}, **_BASELINES}

    def __getitem__(self, name: str) -> type:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


JUDGES: Mapping[str, type] = _Judges()


def _flip_method(judge: str) -> str:
    return next(s.name for s in method_specs() if s.judge == judge)


def get_judge(name: str, backend: Backend | str = "embedded", **options: Any) -> Judge:
    """Build a judge by name. ``options`` go to its constructor (``engine`` or ``runtime``,
    ``config``, ``template``, ``seed``). ``flip`` scores with ``method`` as given (F1 by default),
    ``flip-<method>`` (``flip-likelihood``, ``flip-pmi``, a plugin's) with that method.

    >>> get_judge("longest").name
    'longest'
    """
    try:
        cls = JUDGES[name]
    except KeyError:
        raise ConfigError(f"unknown judge {name!r}; choose from {', '.join(JUDGES)}") from None
    if cls is LongestJudge:
        return LongestJudge(seed=options.get("seed", 0))
    if cls is FlipJudge:
        # "flip" (the paper's) takes the caller's method if given; flip-<method> is that method
        if name == "flip":
            options.setdefault("method", _flip_method(name))
        else:
            options["method"] = _flip_method(name)
    return cls(backend, **options)
