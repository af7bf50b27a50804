"""Head + tail truncation of long responses, and fitting an over-long response into the context."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fliprm import FlipReward
from fliprm.backends.fake import FakeBackend
from fliprm.reward import _MARK, truncate_middle
from helpers_fliprm import RECIPE, expected_reward, score_overlong_recipe

REPLY = json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": "Write an essay."})


def test_head_two_thirds_tail_one_third_exact() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    out, cut = truncate_middle(text, 307)
    keep = 307 - len(_MARK)  # 300 characters of the response survive
    assert cut and len(out) == 307
    assert out == text[:200] + _MARK + text[-100:]
    assert keep == 300


def test_marker_is_visible_to_the_model() -> None:
    out, cut = truncate_middle("x" * 50 + "y" * 50, 40)
    assert cut and "\n[...]\n" in out
    assert out.startswith("x") and out.endswith("y")


@pytest.mark.parametrize("n", [0, 1, 99, 100])
def test_no_op_when_short_enough(n: int) -> None:
    text = "z" * n
    assert truncate_middle(text, 100) == (text, False)


def test_non_positive_limit_means_no_limit() -> None:
    assert truncate_middle("abc" * 10, 0) == ("abc" * 10, False)
    assert truncate_middle("abc" * 10, -5) == ("abc" * 10, False)


@given(st.text(min_size=0, max_size=400), st.integers(min_value=10, max_value=400))
def test_truncation_properties(text: str, limit: int) -> None:
    out, cut = truncate_middle(text, limit)
    if len(text) <= limit:
        assert (out, cut) == (text, False)
        return
    keep = limit - len(_MARK)
    head, tail = (2 * keep) // 3, keep - (2 * keep) // 3
    assert cut and len(out) == limit
    assert out == text[:head] + _MARK + text[len(text) - tail :]


def test_flip_reward_marks_and_sends_the_truncated_response() -> None:
    fb = FakeBackend(lambda req: REPLY)
    rm = FlipReward(fb, max_response_chars=120, method="f1")
    middle = "MIDDLE-SECRET"
    long_resp = "A" * 200 + middle + "Z" * 200
    short, long_ = rm.score(["Write an essay.", "Write an essay."], ["Short answer.", long_resp])
    rm.close()
    assert short.truncated is False and long_.truncated is True
    assert short.reward == long_.reward == 1.0
    sent = {m["content"] for req in fb.calls for m in req.messages}
    user = next(c for c in sent if "ZZZ" in c)
    assert middle not in user and _MARK in user
    assert "A" * 75 in user and "Z" * 38 in user  # head (2/3 of 113) and tail (1/3)


def test_likelihood_path_truncates_too() -> None:
    def reply(req):
        from fliprm._types import Completion

        forced = req.forced_text + req.forced_suffix
        return Completion(text=forced, token_logprobs=[(ch, -0.1) for ch in forced])

    rm = FlipReward(FakeBackend(reply), method="likelihood", max_response_chars=50)
    (r,) = rm.score(["Say hi."], ["h" * 400])
    rm.close()
    assert r.truncated and r.reward == pytest.approx(0.904837, rel=1e-5)


@pytest.mark.model
@pytest.mark.slow
def test_response_longer_than_the_context_is_cut_to_fit(embedded_backend) -> None:
    """A real llama.cpp context overflow is caught and the response cut to fit, once.

    ``embedded_backend`` is requested only for its skip-if-no-model logic: this test needs its
    own small-context instance.
    """
    # n_ctx 1,024, small on purpose: the response alone overflows it
    r = score_overlong_recipe(template="flip-short", max_tokens=32, method="f1")
    assert r.error is None, r.error
    assert r.truncated is True
    assert r.reward == pytest.approx(expected_reward(r, RECIPE))
    assert 0 < r.prompt_tokens < 1024
