"""FlipReward bookkeeping on the FakeBackend: parsing policies, bad input, routing of templates.
Retries, caching and de-duplication (the engine) are in test_engine.py; the real model is
exercised in test_embedded_e2e.py."""

import asyncio

import pytest

from fliprm import ConfigError, FlipReward, ResponseCache
from fliprm.backends.fake import FakeBackend
from fliprm.config import RewardConfig
from fliprm.templates import Template
from helpers_fliprm import flip_json, shown_response


def test_reward_is_f1_of_inferred_against_true_instruction(fake_flip):
    rm = FlipReward(fake_flip("What is the capital of France?"), method="f1")
    (r,) = rm.score(["Identify the capital of France and the city known for the Eiffel Tower."], ["Paris."])
    assert r.reward == pytest.approx(0.4) and r.precision == pytest.approx(0.6)
    assert r.recall == pytest.approx(0.3) and r.parse_ok and r.error is None
    assert r.inferred_instruction == "What is the capital of France?" and r.reasoning == "r"


def test_default_request_and_the_paper_preset(fake_flip):
    # the default reward (pmi) teacher-forces the instruction after the response, then after
    # an empty one (the baseline)
    fb = FakeBackend()
    (r,) = FlipReward(fb).score(["x"], ["the response {response} {{ }}"])
    assert r.method == "pmi" and r.error is None and len(fb.calls) == 2
    assert [c.forced_text for c in fb.calls] == ["x", "x"] and fb.calls[0].temperature == 0.0
    assert "the response {response} {{ }}" in fb.calls[0].messages[1]["content"]
    assert "the response" not in fb.calls[1].messages[1]["content"]
    # the F1 method's request: greedy, flip-short's schema
    fb = fake_flip()
    FlipReward(fb, method="f1").score(["x"], ["the response {response} {{ }}"])
    req = fb.calls[0]
    assert req.temperature == 0.0 and req.max_tokens == 512
    assert [m["role"] for m in req.messages] == ["system", "user"]
    assert "the response {response} {{ }}" in req.messages[1]["content"]
    assert set(req.json_schema["required"]) == {"INFERRED INSTRUCTION"}  # flip-short
    # the paper's reference path is one preset away: reasoning first, unconstrained, raw fallback
    fb = fake_flip()
    rm = FlipReward(fb, config=RewardConfig.preset("paper"))
    rm.score(["x"], ["y"])
    assert rm.template.name == "flip" and rm.config.parse_failure == "raw"
    assert fb.calls[0].json_schema is None and fb.calls[0].max_tokens == 512
    assert "REASONING" in fb.calls[0].messages[0]["content"]


@pytest.mark.parametrize(
    "policy,reward,error", [("raw", 1.0, None), ("zero", 0.0, None), ("error", None, "parse failure")]
)
def test_parse_failure_policies(policy, reward, error):
    rm = FlipReward(FakeBackend(lambda r: "name the capital of france"), parse_failure=policy, method="f1")
    (r,) = rm.score(["Name the capital of France"], ["Paris"])
    assert r.parse_ok is False and r.parse_error
    assert r.reward == reward
    assert (r.error is None) if error is None else (error in r.error)


@pytest.mark.parametrize(
    "instruction,response,msg",
    [
        ("", "y", "'instruction' is empty"),
        ("x", "   ", "'response' is empty"),
        ("x", None, "'response' is missing"),
        (None, "y", "'instruction' is missing"),
        ("x", 42, "'response' must be a string, got int"),
        (["not a message"], "y", "messages[0]"),
    ],
)
def test_bad_items_get_error_results_and_the_batch_goes_on(fake_flip, instruction, response, msg):
    fb = fake_flip("Say hi")
    res = FlipReward(fb, method="f1").score(["Say hi", instruction, "Say hi"], ["Hi!", response, "Hello!"])
    assert [r.error is None for r in res] == [True, False, True]
    assert msg in res[1].error and "item 1" in res[1].error and res[1].reward is None
    assert len(fb.calls) == 2


def test_messages_last_user_turn_is_the_instruction_and_earlier_turns_the_context(fake_flip):
    fb = fake_flip("Now in French, over two lines")
    conv = [
        {"role": "user", "content": "Translate 'cat'."},
        {"role": "assistant", "content": "Cat."},
        {"role": "user", "content": "Now in French,\nover two lines"},
        {"role": "assistant", "content": "Chat."},
    ]
    (r,) = FlipReward(fb, method="f1").score([conv])
    assert r.reward == pytest.approx(1.0)  # the whole multi-line turn, not its first line
    assert r.template == "flip-short-contextual"
    user = fb.calls[0].messages[1]["content"]
    assert "user: Translate 'cat'." in user and "assistant: Cat." in user and "Chat." in user


@pytest.mark.parametrize("template,contextual,reasoning", [
    ("flip-short", "flip-short-contextual", False), ("flip", "flip-contextual", True)])
def test_chat_items_keep_the_chosen_template_family(fake_flip, template, contextual, reasoning):
    # Regression: --template flip-short was replaced by flip-contextual (reasoning first) on
    # every item with a system prompt or earlier turns; with --max-tokens 64 the JSON was cut.
    fb = fake_flip("Now in French")
    rm = FlipReward(fb, template=template, max_tokens=64, method="f1")
    sys_item = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Now in French"}, {"role": "assistant", "content": "Chat."}]
    plain, ctx, sys_ = rm.score(["Now in French", [{"role": "user", "content": "Hi"},
                                                   {"role": "assistant", "content": "Hello"},
                                                   {"role": "user", "content": "Now in French"},
                                                   {"role": "assistant", "content": "Chat."}],
                                 sys_item], ["Chat.", None, None])
    assert plain.template == template and ctx.template == contextual == sys_.template
    for call in fb.calls:
        assert ("REASONING" in call.json_schema["properties"]) is reasoning
    assert all(r.reward == pytest.approx(1.0) for r in (plain, ctx, sys_))


def test_a_template_without_a_context_twin_refuses_chat_items_instead_of_switching(fake_flip):
    t = Template(name="mine", system="Infer.", user="[Response]\n{response}\nJSON please.")
    rm = FlipReward(fake_flip("x"), template=t, method="f1")
    ok, chat = rm.score(["x", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                               {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]],
                        ["y", None])
    assert ok.template == "mine" and ok.error is None
    assert chat.reward is None and "cannot show a conversation context" in chat.error


def test_system_prompt_mode_infers_the_system_prompt(fake_flip):
    fb = fake_flip("You are a pirate")
    conv = [{"role": "system", "content": "You are a pirate"}, {"role": "user", "content": "Hi"}]
    (r,) = FlipReward(fb, infer="system", method="f1").score([conv], ["Arr!"])
    assert r.reward == pytest.approx(1.0) and "user: Hi" in fb.calls[0].messages[1]["content"]


def test_results_keep_input_order_under_concurrency():
    import random

    def reply(req):
        return flip_json(shown_response(req))

    fb = FakeBackend(reply, delay_s=0.0)
    orig = fb.generate

    async def jittery(req):
        await asyncio.sleep(random.random() / 100)
        return await orig(req)

    fb.generate = jittery
    words = [f"word{i}" for i in range(30)]
    res = FlipReward(fb, max_concurrency=8, method="f1").score(words, words)
    assert [r.inferred_instruction for r in res] == words


def test_likelihood_reward_is_geometric_mean_token_probability():
    from fliprm import Completion

    fb = FakeBackend(lambda req: Completion(text="", token_logprobs=[("Say", -1.0), (" hi", -3.0), ('"}', -9.0)]))
    (r,) = FlipReward(fb, method="likelihood").score(["Say hi"], ["Hi"])
    req = fb.calls[0]
    assert req.forced_text == "Say hi" and req.assistant_prefix.startswith('{"INFERRED')
    assert r.logprob == pytest.approx(-2.0)  # the closing '"}' is not part of the instruction
    assert r.reward == pytest.approx(2.718281828 ** -2.0)


def test_truncation_marks_the_result(fake_flip):
    fb = fake_flip()
    (r,) = FlipReward(fb, max_response_chars=100, method="f1").score(["x"], ["a" * 1000])
    assert r.truncated and "[...]" in fb.calls[0].messages[1]["content"]


@pytest.mark.parametrize(
    "kwargs", [{"method": "nope"}, {"parse_failure": "ignore"}, {"infer": "assistant"}, {"max_tokens": 0}]
)
def test_bad_options_raise_config_error(kwargs, fake_flip):
    with pytest.raises(ConfigError):
        FlipReward(fake_flip(), **kwargs)


def test_sync_score_works_inside_a_running_loop(fake_flip):
    rm = FlipReward(fake_flip("Say hi"), method="f1")

    async def inside():
        return rm.score(["Say hi"], ["Hi"])[0].reward

    assert asyncio.run(inside()) == 1.0


def test_mask_echo_hides_a_restated_instruction_from_the_judge(fake_flip):
    fb = fake_flip()
    instr = "Write a short poem about the sea in exactly five lines."
    hacked = "You asked me to write a short poem about the sea in exactly five lines. Bananas."
    (r,) = FlipReward(fb, method="f1").score([instr], [hacked])  # on by default
    sent = fb.calls[0].messages[-1]["content"]
    assert "poem about the sea" not in sent and "[...]" in sent and "Bananas." in sent
    assert r.extra["echo_masked_words"] >= 10
    FlipReward(fb, method="f1", mask_echo=False).score([instr], [hacked])
    assert "poem about the sea" in fb.calls[1].messages[-1]["content"]


def test_multi_sample_f1_averages_seeded_samples_and_reports_the_spread():
    answers = {5: "Name the capital of France.", 6: "Name a city.", 7: "Name the capital of Spain."}
    fb = FakeBackend(lambda r: flip_json(answers[r.seed]))
    rm = FlipReward(fb, samples=3, temperature=0.7, seed=5, method="f1")
    (r,) = rm.score(["Name the capital of France."], ["Paris."])
    assert sorted(c.seed for c in fb.calls) == [5, 6, 7]
    assert all(c.temperature == 0.7 for c in fb.calls)
    singles = [FlipReward(FakeBackend(lambda r, a=a: flip_json(a)), method="f1").score(
        ["Name the capital of France."], ["Paris."])[0].reward for a in answers.values()]
    assert r.reward == pytest.approx(sum(singles) / 3)
    assert r.extra["sample_rewards"] == pytest.approx(singles)
    assert r.extra["reward_std"] > 0 and len(r.extra["sample_instructions"]) == 3
    # seeded samples are deterministic, so they are cached like greedy calls
    cache = ResponseCache(":memory:")
    rm = FlipReward(fb, samples=3, temperature=0.7, seed=5, cache=cache, method="f1")
    rm.score(["x"], ["y"])
    n = len(fb.calls)
    rm.score(["x"], ["y"])
    assert len(fb.calls) == n
