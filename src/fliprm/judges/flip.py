"""FLIP as a judge: score each candidate by backward inference against the instruction."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..backends import Backend
from ..config import RewardConfig, RuntimeOptions
from ..engine import Engine
from ..registry import method_spec
from ..reward import FlipReward
from ._base import Judgment, finish, item_rng, top_indices

__all__ = ["FlipJudge"]


class FlipJudge:
    """Rank candidates by their FLIP reward (word F1 of the inferred vs the real instruction).

    Each candidate is scored on its own, so order cannot matter. Parse failures follow the
    wrapped :class:`FlipReward`'s ``parse_failure`` policy (default ``"raw"``, the reference's:
    F1 on the raw output) and are counted in ``Judgment.parse_failures`` either way; a failed
    call scores None (ranked last). Word F1 ties often (e.g. two off-topic answers at 0.0): the
    ties stay in ``Judgment.top`` and ``pick`` breaks them with a seeded choice.

    Args:
        backend: backend or spec, used when neither ``reward`` nor ``engine`` is given.
        reward: a ready :class:`FlipReward`.
        engine: share this Engine (and so its concurrency cap and cache) with other judges.
        config: the reward definition (:class:`~fliprm.config.RewardConfig`).
        runtime: retries, deadline, cache path (:class:`~fliprm.config.RuntimeOptions`) for the
            Engine built here when no ``engine`` is given.
        method: overrides ``config.method`` (``"likelihood"`` for the ``flip-likelihood`` judge).
        seed: tie-break seed.

    Example:
        >>> from fliprm.backends.fake import FakeBackend
        >>> fb = FakeBackend(lambda r: '{"INFERRED INSTRUCTION": "Say hi."}')
        >>> asyncio.run(FlipJudge(fb, method="f1").arank("Say hi.", ["hi"])).scores
        [1.0]
    """

    name = "flip"

    def __init__(
        self,
        backend: Backend | str = "embedded",
        *,
        reward: FlipReward | None = None,
        engine: Engine | None = None,
        config: RewardConfig | None = None,
        runtime: RuntimeOptions | None = None,
        method: str | None = None,
        seed: int | None = 0,
    ) -> None:
        if reward is None:
            config = (config or RewardConfig()).updated(method=method)
            if engine is not None:
                reward = FlipReward(config=config, engine=engine)
            else:
                reward = FlipReward(backend, config=config, runtime=runtime)
        self.reward = reward
        self.backend = reward.backend
        self.seed = seed
        # the method's judge name from the registry: flip (F1), flip-pmi, flip-<plugin method>
        self.name = method_spec(reward.config.method).judge

    def identity(self) -> dict[str, Any]:
        return {"judge": self.name, **self.reward.identity()}

    async def arank(self, instruction: str, candidates: list[str]) -> Judgment:
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(self.reward.ascore_one(instruction, c, where=f"candidate {i}")
              for i, c in enumerate(candidates))
        )
        j = Judgment(scores=[r.reward for r in results], top=[], pick=None)
        j.calls = len(results)
        j.prompt_tokens = sum(r.prompt_tokens for r in results)
        j.completion_tokens = sum(r.completion_tokens for r in results)
        # only answers that came back and did not parse count as parse failures
        j.parse_failures = sum(1 for r in results if r.raw_output is not None and not r.parse_ok)
        # a call that raised (not a bad answer or a parse-policy None) leaves the ranking
        # incomplete; ascore_one marks those with extra["error_type"]
        j.failed_calls = sum(1 for r in results if r.error and "error_type" in r.extra)
        j.errors = [r.error for r in results if r.error]
        j.error_kinds = [r.error_kind or "internal" for r in results if r.error]
        j.top = top_indices(j.scores)
        j.details["inferred"] = [r.inferred_instruction for r in results]
        return finish(j, item_rng(self.seed, instruction), t0)

    async def aclose(self) -> None:
        await self.reward.aclose()
