"""Every adapter, fed a bad ``fliprm serve`` reply, gives each sample its own reward or its
failure value, never another sample's (issue 21: a dropped result shifted 599 of 600 rewards)."""

from __future__ import annotations

import math

import pytest

from fliprm.config import RewardConfig
from fliprm.integrations import set_reward
from helpers_fliprm import FliprmStandIn

N = 5
PROMPT = "<|im_start|>user\nWhat is it?<|im_end|>\n<|im_start|>assistant\n"


def own_reward(response: str) -> float:
    """Each response has a reward of its own, so a reward handed to a neighbour shows."""
    return round(0.1 * (int(response.split("-")[1]) + 1), 4)


def good_results(body: dict) -> list[dict]:
    """What a current server answers: results in request order, each echoing id and index."""
    out = []
    for i, item in enumerate(body["items"]):
        r = {
            "reward": own_reward(item["response"]),
            "method": "pmi",
            "logprob": -1.0,
            "extra": {"pmi": 0.5},
            "inferred_instruction": f"inferred {item['response']}",
            "index": i,
        }
        if "id" in item:
            r["id"] = item["id"]
        out.append(r)
    return out


def _strip_keys(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("id", "index")} for r in results]


def _set(results: list, at: int, **changes: object) -> list:
    results = [dict(r) for r in results]
    results[at].update(changes)
    return results


# shape -> (reply given the good results, positions that must fail for n items)
SHAPES = {
    "ok": (lambda rs: {"results": rs}, lambda n: set()),
    "short": (lambda rs: {"results": rs[: len(rs) // 2] + rs[len(rs) // 2 + 1 :]},
              lambda n: {n // 2}),
    "short_no_keys": (lambda rs: {"results": _strip_keys(rs[1:])}, lambda n: set(range(n))),
    "reordered": (lambda rs: {"results": rs[::-1]}, lambda n: set()),
    "reordered_no_keys": (lambda rs: {"results": _strip_keys(rs[::-1])},
                          lambda n: set(range(n))),
    "empty": (lambda rs: {"results": []}, lambda n: set(range(n))),
    "nan": (lambda rs: {"results": _set(rs, 0, reward=float("nan"))}, lambda n: {0}),
    "infinite": (lambda rs: {"results": _set(rs, -1, reward=float("inf"))}, lambda n: {n - 1}),
    "string": (lambda rs: {"results": _set(rs, 0, reward="0.7")}, lambda n: {0}),
    "bool": (lambda rs: {"results": _set(rs, -1, reward=True)}, lambda n: {n - 1}),
    "no_reward_key": (lambda rs: {"results": [{k: v for k, v in r.items() if k != "reward"}
                                              if r["index"] == 0 else r for r in rs]},
                      lambda n: {0}),
    "result_not_object": (lambda rs: {"results": [7, *rs[1:]]}, lambda n: {0}),
    "no_results": (lambda rs: {"model": "m"}, lambda n: set(range(n))),
    "results_not_list": (lambda rs: {"results": {"0": rs[0]}}, lambda n: set(range(n))),
    "reply_not_object": (lambda rs: rs, lambda n: set(range(n))),
    "duplicate_index": (lambda rs: {"results": [rs[0], *_set(rs, 0, reward=0.99)[:1], *rs[1:]]},
                        lambda n: {0}),
    "index_out_of_range": (lambda rs: {"results": _set(rs, 0, index=99, id=99)}, lambda n: {0}),
}


async def _trl(url, instrs, resps):
    from fliprm.integrations.trl import get_flip_reward

    got = await get_flip_reward(server_url=url, method="pmi")(prompts=instrs, completions=resps)
    return [None if r is None else r for r in got]


async def _verl_batch(url, instrs, resps):
    from fliprm.integrations.verl import acompute_score_batch

    out = await acompute_score_batch(["src"] * len(resps), resps, instrs, None,
                                     server_url=url, method="pmi", failure_score=-1.0)
    return [None if d["flip_failed"] else d["score"] for d in out]


async def _verl_single(url, instrs, resps):
    from fliprm.integrations.verl import compute_score

    out = [await compute_score("src", r, i, None, server_url=url, method="pmi", failure_score=-1.0)
           for i, r in zip(instrs, resps)]
    assert all(d["score"] == -1.0 for d in out if d["flip_failed"])
    return [None if d["flip_failed"] else d["score"] for d in out]


async def _openrlhf(url, instrs, resps):
    import asyncio

    from fliprm.integrations.openrlhf import reward_func

    out = await asyncio.to_thread(
        reward_func, [PROMPT + r + "<|im_end|>" for r in resps], [PROMPT] * len(resps), instrs,
        server_url=url, method="pmi", failure_score=-1.0,
    )
    rewards, failed = list(out["rewards"].tolist()), out["extra_logs"]["flip_failed"].tolist()
    assert all(r == -1.0 for r, f in zip(rewards, failed) if f)
    return [None if f else r for r, f in zip(rewards, failed)]


async def _open_instruct(url, instrs, resps):
    from fliprm.integrations.open_instruct import FlipVerifier, FlipVerifierConfig

    v = FlipVerifier(FlipVerifierConfig(flip_server_url=url, flip_method="pmi",
                                        flip_failure_score=-1.0))
    out = [await v.async_call([], r, i) for i, r in zip(instrs, resps)]
    return [None if o.reasoning.startswith("flip failed") else o.score for o in out]


ADAPTERS = {"trl": _trl, "verl": _verl_batch, "verl_single": _verl_single,
            "openrlhf": _openrlhf, "open_instruct": _open_instruct}


@pytest.fixture(autouse=True)
def _no_override():
    set_reward(None)
    yield
    set_reward(None)


def _health() -> dict:
    ident = RewardConfig.preset("rl").identity("fake")
    return {"status": "ok", "model": "fake", "fingerprint": "f" * 16, "settings": ident}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("adapter", list(ADAPTERS))
async def test_each_sample_gets_its_own_reward_or_its_failure(adapter, shape, monkeypatch):
    for k in ("FLIPRM_SERVER_URL", "FLIPRM_METHOD", "FLIPRM_PRESET"):
        monkeypatch.delenv(k, raising=False)
    mangle, must_fail = SHAPES[shape]
    srv = FliprmStandIn(lambda body: mangle(good_results(body)), health=_health())
    try:
        resps = [f"resp-{k}" for k in range(N)]
        got = await ADAPTERS[adapter](srv.url, ["Say something."] * N, resps)
    finally:
        srv.close()
    per_call = 1 if adapter in ("verl_single", "open_instruct") else N
    failing = must_fail(per_call)
    expected = [None if (k % per_call) in failing else own_reward(r) for k, r in enumerate(resps)]
    assert len(got) == N
    for g, e in zip(got, expected):
        if e is None:
            assert g is None
        else:
            assert g is not None and math.isclose(g, e, rel_tol=1e-6), (got, expected)


async def test_one_dropped_result_in_a_256_item_chunk_moves_no_reward(monkeypatch):
    """The issue's reproduction: 600 TRL samples, one result missing from the first chunk."""
    from fliprm.integrations.trl import get_flip_reward

    monkeypatch.delenv("FLIPRM_SERVER_URL", raising=False)

    def reply(body):
        rs = good_results(body)
        return {"results": [r for r in rs if r["inferred_instruction"] != "inferred resp-100"]}

    srv = FliprmStandIn(reply, health=_health())
    try:
        resps = [f"resp-{k}" for k in range(600)]
        got = await get_flip_reward(server_url=srv.url, method="pmi")(
            prompts=["Say something."] * 600, completions=resps)
    finally:
        srv.close()
    assert got[100] is None
    assert [g for k, g in enumerate(got) if k != 100] == [
        own_reward(r) for k, r in enumerate(resps) if k != 100]


async def test_a_scorer_returning_too_few_results_fails_those_items_not_zero():
    """A short list from any scorer is a failure (None), never a silent 0.0 'empty response'."""
    from fliprm import FlipResult
    from fliprm.integrations.trl import get_flip_reward

    class Short:
        async def ascore(self, instructions, responses=None, contexts=None):
            return [FlipResult(reward=0.5, method="pmi")]

    set_reward(Short())
    got = await get_flip_reward(method="pmi")(prompts=["a", "b"], completions=["x", "y"])
    assert got == [None, None]


async def test_a_non_finite_reward_from_an_in_process_scorer_is_a_failure():
    from fliprm import FlipResult
    from fliprm.integrations.verl import acompute_score_batch

    class Odd:
        async def ascore(self, instructions, responses=None, contexts=None):
            return [FlipResult(reward=float("nan"), method="pmi"),
                    FlipResult(reward="0.7", method="pmi"),  # type: ignore[arg-type]
                    FlipResult(reward=0.25, method="pmi")]

    set_reward(Odd())
    out = await acompute_score_batch(["s"] * 3, ["a", "b", "c"], ["i"] * 3, None, method="pmi",
                                     failure_score=-1.0)
    assert [d["score"] for d in out] == [-1.0, -1.0, 0.25]
    assert [d["flip_failed"] for d in out] == [1.0, 1.0, 0.0]
