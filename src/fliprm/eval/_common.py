"""Pieces shared by the RewardBench 2 runner and the best-of-N reranker."""

from __future__ import annotations

from collections.abc import Callable

from ..backends import Backend
from ..config import RewardConfig
from ..engine import Engine
from ..judges import Judge, get_judge

__all__ = ["JudgeFactory", "judge_factory", "words"]

JudgeFactory = Callable[[str, int], Judge]


def words(text: str) -> int:
    return len(text.split())


def judge_factory(backend: Backend, config: RewardConfig | None = None) -> JudgeFactory:
    """``make(method, seed) -> Judge``; every judge shares one Engine over ``backend`` and the
    decoding and truncation settings of ``config``.

    >>> from fliprm.backends.fake import FakeBackend
    >>> make = judge_factory(FakeBackend([]))
    >>> make("pointwise", 1).engine is make("listwise", 2).engine
    True
    """
    engine = Engine(backend)
    config = config or RewardConfig()

    def make(method: str, seed: int) -> Judge:
        return get_judge(method, backend=backend, engine=engine, seed=seed, config=config)

    return make
