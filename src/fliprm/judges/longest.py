"""The length baseline: the longest answer wins. No model call.

AlpacaEval's annotator is known to favour long answers, so any judge must beat this to show it
reads content rather than counting characters.
"""

from __future__ import annotations

import time

from ._base import Judgment, finish, item_rng, top_indices

__all__ = ["LongestJudge"]


class LongestJudge:
    """Score = length in characters; equal lengths tie.

    >>> import asyncio
    >>> asyncio.run(LongestJudge().arank("Say hi.", ["hi", "hello"])).pick
    1
    """

    name = "longest"

    def __init__(self, *, seed: int | None = 0, **_: object) -> None:
        self.seed = seed

    def identity(self) -> dict[str, object]:
        return {"judge": self.name}

    async def arank(self, instruction: str, candidates: list[str]) -> Judgment:
        t0 = time.perf_counter()
        scores: list[float | None] = [float(len(c)) for c in candidates]
        j = Judgment(scores=scores, top=top_indices(scores), pick=None)
        return finish(j, item_rng(self.seed, instruction), t0)

    async def aclose(self) -> None:
        return None
