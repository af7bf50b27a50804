"""Scoring methods (src/fliprm/methods.py): how forced calls are scheduled."""

from __future__ import annotations

import asyncio

import pytest

from fliprm import FlipReward
from fliprm.backends.fake import FakeBackend


class _Watch(FakeBackend):
    """A FakeBackend that records, per response, how many forced calls ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.max_concurrency = 8
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_all = 0

    async def generate(self, request):  # type: ignore[no-untyped-def]
        text = " ".join(str(m["content"]) for m in request.messages)
        key = next((k for k in ("sleeping well", "autumn leaves") if k in text), "baseline")
        self.running[key] = self.running.get(key, 0) + 1
        self.peak[key] = max(self.peak.get(key, 0), self.running[key])
        self.peak_all = max(self.peak_all, sum(self.running.values()))
        try:
            await asyncio.sleep(0.05)
            return await super().generate(request)
        finally:
            self.running[key] -= 1


def test_forced_calls_sharing_a_response_run_one_after_another_and_others_in_parallel():
    # one response against several instructions: the second call should reuse the first's
    # prompt (same llama.cpp slot) rather than read the response again in another slot
    backend = _Watch()
    rm = FlipReward(backend, method="pmi", mask_echo=False)
    a = "An answer about sleeping well: keep a regular schedule and a dark, cool room."
    b = "A haiku: autumn leaves falling, red and gold on the cold ground, a haiku of fall."
    instructions = ["Give sleep tips.", "Write a haiku.", "Name a city.", "Say hi."]
    res = rm.score(instructions * 2, [a] * 4 + [b] * 4)
    assert all(r.error is None for r in res), [r.error for r in res]
    assert backend.peak["sleeping well"] == backend.peak["autumn leaves"] == 1, backend.peak
    # different responses (and the baselines) still overlap
    assert backend.peak_all >= 2


def test_pmi_min_scores_the_worst_explained_sentence():
    """pmi-min: the same forced calls as pmi, the reward from the lowest per-sentence pmi."""
    import math

    from fliprm import FlipReward
    from fliprm.config import RewardConfig

    instr = "Describe ocean waves. Reply using zebra quartz lexicon."
    both = "Ocean waves roll in. I reply using zebra quartz lexicon words."
    first = "Ocean waves roll in and describe the tide."
    with FlipReward("fake", config=RewardConfig(method="pmi-min", mask_echo=False)) as rm:
        r_both, r_first = rm.score([instr, instr], [both, first])
    with FlipReward("fake", config=RewardConfig(method="pmi", mask_echo=False)) as rm:
        p_first = rm.score([instr], [first])[0]
    for r in (r_both, r_first):
        assert r.error is None and len(r.extra["sentence_pmi"]) == 2
        assert r.reward == pytest.approx(1 / (1 + math.exp(-min(r.extra["sentence_pmi"]))),
                                         abs=1e-3)
    # the answer that ignores the second sentence is scored by it, below its own mean pmi
    assert r_first.extra["sentence_pmi"][1] < r_first.extra["sentence_pmi"][0]
    assert r_first.extra["pmi"] == pytest.approx(p_first.extra["pmi"])
    assert r_first.reward < p_first.reward and r_first.reward < r_both.reward
