"""The likelihood method: mean log p(instruction | response) by teacher forcing."""

from __future__ import annotations

import json
import math

import pytest

from fliprm import FlipReward
from fliprm._types import Completion
from fliprm.backends.fake import FakeBackend


def _forced_reply(per_token: float = -0.5, suffix_lp: float = -9.0):
    """A FakeBackend reply that echoes the forced text one character per token."""

    def reply(req):
        assert req.forced_text is not None and req.assistant_prefix.endswith('"')
        toks = [(ch, per_token) for ch in req.forced_text]
        toks += [(ch, suffix_lp) for ch in req.forced_suffix]  # '"}' must not count
        return Completion(text=req.forced_text + req.forced_suffix, token_logprobs=toks)

    return reply


def test_reward_is_exp_mean_logprob_of_the_instruction_only() -> None:
    fb = FakeBackend(_forced_reply())
    rm = FlipReward(fb, method="likelihood")
    (r,) = rm.score(['Say "hi".'], ["hi"])
    rm.close()
    assert r.error is None and r.method == "likelihood"
    assert r.logprob == pytest.approx(-0.5)
    assert r.reward == pytest.approx(math.exp(-0.5))
    # the instruction is forced JSON-escaped, inside the answer object
    req = fb.calls[0]
    assert req.forced_text == json.dumps('Say "hi".')[1:-1] and req.forced_suffix == '"}'
    assert req.json_schema is None and req.messages[0]["role"] == "system"


def test_no_logprobs_is_an_error_not_a_reward() -> None:
    rm = FlipReward(FakeBackend(lambda req: Completion(text="x")), method="likelihood")
    (r,) = rm.score(["x"], ["y"])
    rm.close()
    assert r.reward is None and "log-probabilities" in (r.error or "")


def test_pmi_is_the_sigmoid_of_likelihood_minus_the_empty_response_baseline() -> None:
    from helpers_fliprm import shown_response

    def reply(req):
        lp = -3.0 if shown_response(req) == "" else -1.0
        return _forced_reply(per_token=lp)(req)

    fb = FakeBackend(reply)
    rm = FlipReward(fb, method="pmi")
    res = rm.score(["Say hi.", "Say hi.", "Say hi."], ["hi", "hello", "hey"])
    rm.close()
    for r in res:
        assert r.error is None and r.method == "pmi" and r.logprob == pytest.approx(-1.0)
        assert r.extra["pmi"] == pytest.approx(2.0)
        assert r.reward == pytest.approx(1 / (1 + math.exp(-2.0)))
    # three responses, one instruction: one baseline call (merged in flight), three forced calls
    assert sum(shown_response(c) == "" for c in fb.calls) == 1 and len(fb.calls) == 4


# Real pairs, written for this test: the answers say clearly what was asked.
PAIRS = [
    (
        "Translate 'good morning' into French.",
        "Bonjour ! (« Good morning » se dit « bonjour » en français.)",
    ),
    ("List the first five prime numbers.", "The first five prime numbers are 2, 3, 5, 7 and 11."),
    ("Write a SQL query that counts the rows in the users table.", "SELECT COUNT(*) FROM users;"),
    (
        "Explain in one sentence why the sky is blue.",
        (
            "The sky looks blue because air molecules scatter short blue wavelengths of sunlight "
            "much more than the longer red ones (Rayleigh scattering)."
        ),
    ),
]


@pytest.mark.model
def test_matching_instruction_beats_an_unrelated_one(embedded_backend) -> None:
    rm = FlipReward(embedded_backend, method="likelihood")
    instrs = [x for x, _ in PAIRS]
    resps = [y for _, y in PAIRS]
    unrelated = instrs[2:] + instrs[:2]  # every response paired with a different task
    own = rm.score(instrs, resps)
    other = rm.score(unrelated, resps)
    # no rm.close(): it would unload the session-wide model
    for o, u in zip(own, other):
        assert o.error is None and u.error is None, (o.error, u.error)
        assert o.logprob is not None and o.logprob < 0 and 0 < o.reward < 1
        assert o.completion_tokens > 0 and o.prompt_tokens > 0
    assert all(o.reward > u.reward for o, u in zip(own, other)), [
        (round(o.reward, 4), round(u.reward, 4)) for o, u in zip(own, other)
    ]


@pytest.mark.model
def test_likelihood_is_deterministic_and_cached(embedded_backend, tmp_path) -> None:
    rm = FlipReward(embedded_backend, method="likelihood", cache=tmp_path / "c.sqlite")
    (a,) = rm.score([PAIRS[1][0]], [PAIRS[1][1]])
    (b,) = rm.score([PAIRS[1][0]], [PAIRS[1][1]])
    assert not a.cached and b.cached
    assert b.reward == pytest.approx(a.reward)
    rm.engine.cache.close()


@pytest.mark.model
def test_a_llamacpp_server_forces_the_instruction_in_one_grammar_request(embedded_backend) -> None:
    """Over HTTP the whole instruction is forced in one request (a grammar of its own token
    ids), with the same log-probabilities as the in-process per-token steps."""
    from fliprm.backends.openai import OpenAIBackend

    pair = (["Give me three tips for sleeping better."],
            ["Keep a regular sleep schedule, avoid screens late, and keep the room dark."])
    completions: list[str] = []

    class Counting(OpenAIBackend):
        async def _post(self, url, body, *a, **kw):  # type: ignore[no-untyped-def]
            if url.endswith("/v1/completions"):
                completions.append(url)
            return await super()._post(url, body, *a, **kw)

    http = Counting(base_url=embedded_backend.http_url, api_key=embedded_backend.api_key,
                    dialect="llamacpp", likelihood_mode="forced")
    rm_http = FlipReward(http, method="likelihood", mask_echo=False)
    (over_http,) = rm_http.score(*pair)
    rm_http.close()
    (local,) = FlipReward(embedded_backend, method="likelihood", mask_echo=False).score(*pair)
    assert over_http.error is None and local.error is None, (over_http.error, local.error)
    # one completion request for the whole instruction, not one per token
    assert over_http.extra["forced_tokens"] == local.extra["forced_tokens"] > 5
    assert len(completions) == 1
    # the same tokens and model; the prompt is evaluated in other batch shapes on the two paths
    # (and after other tests' prefixes in the shared 4-slot backend), which moves the mean
    # per-token log-prob of this 9-token instruction by rounding of the quantised kernels:
    # measured 0.00 on one state, 0.022 and 0.068 nats in two CI runs. 0.15 allows that and
    # still fails a wrong token or a shifted position (each costs several nats here)
    assert over_http.logprob == pytest.approx(local.logprob, abs=0.15)
