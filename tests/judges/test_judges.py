"""Judges: prompt rendering, parsing, aggregation (FakeBackend) and one real-model run each."""

from __future__ import annotations

import json
import re

import pytest

from fliprm.backends.fake import FakeBackend
from fliprm.config import RewardConfig
from fliprm.engine import Engine
from fliprm.errors import BackendError, ConfigError
from fliprm.judges import (
    FlipJudge,
    ListwiseJudge,
    LongestJudge,
    PairwiseJudge,
    PointwiseJudge,
    format_list,
    get_judge,
    top_indices,
)
from fliprm.judges._base import item_rng
from fliprm.judges.listwise import parse_index
from fliprm.judges.pairwise import parse_better
from fliprm.judges.pointwise import parse_score
from fliprm.templates import Template

INSTR = "Name the capital of France."


def user_text(req) -> str:
    return [m for m in req.messages if m["role"] == "user"][-1]["content"]


# ---- pointwise --------------------------------------------------------------------------------


async def test_pointwise_renders_each_candidate_and_picks_highest():
    scores = {"Paris.": 9, "Lyon.": 3, "I like cheese.": 1}

    def reply(req):
        text = user_text(req)
        cand = text.split("[Response]\n")[1].split("\n")[0]
        return json.dumps({"REASONING": "x", "SCORE": scores[cand]})

    fb = FakeBackend(reply)
    j = await PointwiseJudge(fb).arank(INSTR, list(scores))
    assert len(fb.calls) == 3
    assert all(INSTR in user_text(c) for c in fb.calls)
    assert j.scores == [9.0, 3.0, 1.0] and j.top == [0] and j.pick == 0 and not j.tie
    assert j.calls == 3 and j.parse_failures == 0 and j.tokens > 0
    schema = fb.calls[0].json_schema
    assert schema["properties"]["SCORE"] == {"type": "integer", "minimum": 1, "maximum": 10}
    assert schema["required"] == ["REASONING", "SCORE"]


async def test_pointwise_unparseable_ranks_last_and_is_counted():
    replies = iter(['{"SCORE": 4}', "I refuse to answer in JSON", '{"SCORE": 42}', '{"SCORE": 4}'])
    fb = FakeBackend(lambda r: next(replies), max_concurrency=1)
    j = await PointwiseJudge(fb).arank(INSTR, ["a", "b", "c", "d"])
    assert j.scores == [4.0, None, None, 4.0]
    assert j.parse_failures == 2
    # the tie is broken by a choice seeded by (seed, instruction): the same one every run
    assert j.top == [0, 3] and j.tie and j.pick == item_rng(0, INSTR).choice([0, 3])


async def test_pointwise_all_unparseable_is_full_tie():
    j = await PointwiseJudge(FakeBackend(lambda r: "nope")).arank(INSTR, ["a", "b", "c", "d"])
    assert j.top == [0, 1, 2, 3] and j.parse_failures == 4


async def test_failed_call_is_an_error_not_a_parse_failure():
    fb = FakeBackend([BackendError("boom"), '{"SCORE": 2}'], max_concurrency=1)
    j = await PointwiseJudge(fb, engine=Engine(fb, max_retries=0)).arank(INSTR, ["a", "b"])
    assert j.scores == [None, 2.0] and j.parse_failures == 0 and len(j.errors) == 1


@pytest.mark.parametrize(
    "text,expected",
    [('{"SCORE": 7}', 7.0), ('```json\n{"score": "8/10"}\n```', 8.0), ('{"SCORE": 0}', None),
     ('{"SCORE": "high"}', None), ("", None), ('{"REASONING": "no score"}', None)],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_custom_template_and_unconstrained():
    t = Template(name="mine", system="", user="Q: {instruction}\nA: {response}\nJSON SCORE only.")
    fb = FakeBackend(lambda r: '{"SCORE": 5}')
    judge = PointwiseJudge(fb, template=t, config=RewardConfig(constrained=False, max_tokens=32))
    import asyncio

    asyncio.run(judge.arank("Q1", ["A1"]))
    req = fb.calls[0]
    assert req.messages == ({"role": "user", "content": "Q: Q1\nA: A1\nJSON SCORE only."},)
    assert req.json_schema is None and req.max_tokens == 32


# ---- listwise ---------------------------------------------------------------------------------


def test_format_list():
    assert format_list(["x", "y"]) == "[Response 0]\nx\n\n[Response 1]\ny"


async def test_listwise_shuffles_and_maps_index_back():
    cands = ["alpha answer", "beta answer", "gamma answer", "delta answer"]

    def reply(req):  # always choose the slot where "gamma" was shown
        shown = re.findall(r"\[Response (\d)\]\n(\w+)", user_text(req))
        idx = next(int(i) for i, w in shown if w == "gamma")
        return json.dumps({"REASONING": "", "BEST_RESPONSE_INDEX": idx})

    orders = set()
    for seed in range(6):
        fb = FakeBackend(reply)
        j = await ListwiseJudge(fb, seed=seed).arank(INSTR, cands)
        assert j.pick == 2 and j.top == [2] and j.scores == [0.0, 0.0, 1.0, 0.0]
        assert len(fb.calls) == 1
        assert fb.calls[0].json_schema["properties"]["BEST_RESPONSE_INDEX"]["maximum"] == 3
        orders.add(tuple(j.details["order"]))
    assert len(orders) > 1  # the seed changes the shown order


async def test_listwise_same_seed_same_order():
    fb = FakeBackend(lambda r: '{"BEST_RESPONSE_INDEX": 0}')
    a = await ListwiseJudge(fb, seed=3).arank(INSTR, list("abcd"))
    b = await ListwiseJudge(fb, seed=3).arank(INSTR, list("abcd"))
    assert a.details["order"] == b.details["order"] and user_text(fb.calls[0]) == user_text(fb.calls[1])


async def test_listwise_unparseable_is_k_way_tie():
    j = await ListwiseJudge(FakeBackend(lambda r: '{"BEST_RESPONSE_INDEX": 7}')).arank(INSTR, list("abcd"))
    assert j.top == [0, 1, 2, 3] and j.scores == [None] * 4 and j.parse_failures == 1


def test_parse_index():
    assert parse_index('{"BEST_RESPONSE_INDEX": "Response 1"}', 4) == 1
    assert parse_index('{"BEST_RESPONSE_INDEX": -1}', 4) is None


# ---- pairwise ---------------------------------------------------------------------------------


async def test_pairwise_round_robin_counts_wins_and_randomizes_positions():
    quality = {"best": 3, "good": 2, "meh": 1, "bad": 0}

    def reply(req):
        t = user_text(req)
        a = t.split("[Response A]\n")[1].split("\n")[0]
        b = t.split("[Response B]\n")[1].split("\n")[0]
        return json.dumps({"BETTER_RESPONSE": "A" if quality[a] > quality[b] else "B"})

    fb = FakeBackend(reply)
    j = await PairwiseJudge(fb, seed=1).arank(INSTR, ["meh", "best", "bad", "good"])
    assert len(fb.calls) == 6  # 4 choose 2
    assert j.scores == [1.0, 3.0, 0.0, 2.0] and j.top == [1] and j.pick == 1
    firsts = [p["a"] < p["b"] for p in j.details["pairs"]]
    assert any(firsts) and not all(firsts)  # both orders occur
    assert fb.calls[0].json_schema["properties"]["BETTER_RESPONSE"]["enum"] == ["A", "B"]


async def test_pairwise_failure_is_a_draw():
    j = await PairwiseJudge(FakeBackend(lambda r: "garbage")).arank(INSTR, ["a", "b", "c"])
    assert j.scores == [1.0, 1.0, 1.0] and j.top == [0, 1, 2] and j.parse_failures == 3


def test_parse_better():
    assert parse_better('{"BETTER_RESPONSE": "b"}') == "B"
    assert parse_better('{"BETTER_RESPONSE": "[A]"}') == "A"
    assert parse_better('{"BETTER_RESPONSE": "both"}') is None


# ---- flip, longest, registry ------------------------------------------------------------------


async def test_flip_judge_scores_each_candidate(fake_flip):
    fb = fake_flip("Name the capital of France.")
    j = await FlipJudge(fb, method="f1").arank(INSTR, ["Paris is the capital.", "Berlin."])
    assert j.scores == [1.0, 1.0] and j.tie and j.calls == 2
    # the FLIP prompt carries the response only, never the instruction
    assert all(INSTR not in user_text(c) for c in fb.calls)


async def test_flip_judge_counts_parse_failures():
    fb = FakeBackend(["not json at all", '{"INFERRED INSTRUCTION": "Name the capital of Spain."}'],
                     max_concurrency=1)
    cfg = RewardConfig(method="f1", parse_failure="zero")
    j = await FlipJudge(fb, config=cfg).arank(INSTR, ["x", "y"])
    assert j.parse_failures == 1 and j.scores[0] == 0.0 and j.scores[1] > 0.5 and j.pick == 1


async def test_judges_share_one_engine(fake_flip):
    fb = fake_flip()
    engine = Engine(fb)
    flip = get_judge("flip", backend=fb, engine=engine)
    point = get_judge("pointwise", backend=fb, engine=engine)
    assert flip.reward.engine is engine and point.engine is engine


async def test_longest():
    j = await LongestJudge().arank(INSTR, ["ab", "abcd", "abcd", "a"])
    assert j.top == [1, 2] and j.calls == 0 and j.pick == item_rng(0, INSTR).choice([1, 2])
    other = await LongestJudge(seed=1).arank(INSTR, ["ab", "abcd", "abcd", "a"])
    assert other.pick == item_rng(1, INSTR).choice([1, 2])


def test_registry_and_top_indices():
    with pytest.raises(ConfigError, match="unknown judge"):
        get_judge("oracle")
    assert get_judge("listwise", backend=FakeBackend([])).name == "listwise"
    assert top_indices([1.0, None, 1.0]) == [0, 2] and top_indices([None]) == [0]


# ---- real model: one tiny item per method -----------------------------------------------------

#: per judge, a pair where one answer is the answer and the other is off topic. The judge
#: model is small: pointwise scored 8 and 8 on several such pairs, pairwise preferred the
#: off-topic answer on 3 of 6 (position bias), and F1 cannot recover "Translate ..." from
#: "Merci." (measured); each judge gets a pair it ranks right, so a bug that maps a verdict
#: back to the wrong candidate (a shuffle, a swapped position) fails here
BOILING = ("What is the boiling point of water at sea level?",
           ["At sea level, water boils at 100 degrees Celsius (212 degrees Fahrenheit).",
            "Dogs are loyal pets that need daily walks."])
MERCI = ("Translate 'thank you' into French.",
         ["Merci.", "Dogs are loyal pets that need daily walks."])
UNAMBIGUOUS = {"flip": BOILING, "pointwise": MERCI, "pairwise": MERCI, "listwise": BOILING}


@pytest.mark.model
@pytest.mark.parametrize("name", ["flip", "pointwise", "pairwise", "listwise"])
async def test_real_model_judges(embedded_backend, name):
    judge = get_judge(name, backend=embedded_backend, config=RewardConfig(max_tokens=128))
    j = await judge.arank(*UNAMBIGUOUS[name])
    assert j.calls >= 1 and j.completion_tokens > 0 and not j.errors
    assert j.parse_failures == 0  # JSON-constrained decoding
    # the right answer (index 0) first, alone: not a tie broken in its favour
    assert len(j.scores) == 2 and j.top == [0] and j.pick == 0 and not j.tie, j
