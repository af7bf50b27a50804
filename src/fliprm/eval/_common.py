"""Pieces shared by the RewardBench 2 runner and the best-of-N reranker."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..backends import Backend
from ..config import RewardConfig
from ..engine import Engine
from ..judges import Judge, get_judge

__all__ = ["JudgeFactory", "identify_judges", "judge_factory", "words"]

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


async def identify_judges(judges: Iterable[Judge]) -> None:
    """Have each judge's backend say what it serves (an HTTP judge: its server's model) before
    the judges' identities are recorded beside an output, so a resume on another model under
    the same name is refused. Raises the backend's error if its server cannot be reached.

    >>> import asyncio
    >>> from fliprm.judges import LongestJudge
    >>> asyncio.run(identify_judges([LongestJudge()]))  # no model: nothing to ask
    """
    seen: set[int] = set()
    for judge in judges:
        engine = getattr(judge, "engine", None) or getattr(getattr(judge, "reward", None),
                                                           "engine", None)
        if isinstance(engine, Engine) and id(engine) not in seen:
            seen.add(id(engine))
            await engine.identify()
