"""The OpenAI backend's vLLM dialect, against a stand-in server on 127.0.0.1 that replays real
vLLM 0.32 replies (tests/fixtures/vllm/) the way vLLM answers: it ignores llama.cpp's top-level
``grammar``, applies ``structured_outputs``, and returns ``prompt_logprobs`` when asked.

Regression tests for two silent bugs: likelihood over the openai backend against vLLM sent
llama.cpp's ``grammar`` and scored whatever free text came back; a trailing assistant message
(the ``assistant_prefix``) was sent without ``continue_final_message``, so vLLM closed it and
opened a new turn. The real server is exercised in tests/real_vllm (``-m vllm``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
from collections.abc import Callable
from typing import Any

import pytest

from fliprm import FlipReward
from fliprm._types import FLIP_REASONING_MAX_CHARS, GenerateRequest
from fliprm.backends._chat import build_body, read_reply
from fliprm.backends.openai import OpenAIBackend, span_logprobs
from fliprm.errors import BadResponse
from fliprm.methods import _STRING_TAIL, INSTRUCTION_KEY
from helpers_fliprm import FIXTURES, OpenAIStandIn

FIX = FIXTURES / "vllm"
PREFIX = '{"' + INSTRUCTION_KEY + '": "'


def fixture(name: str) -> Any:
    return json.loads((FIX / name).read_text(encoding="utf-8"))


def last_tokens(reply: dict[str, Any], n: int) -> list[tuple[str, float]]:
    out = []
    for e in reply["prompt_logprobs"][-n:]:
        info = next(iter(e.values()))
        out.append((info["decoded_token"], info["logprob"]))
    return out


def vllm_reply(body: dict[str, Any]) -> dict[str, Any]:
    """What vLLM 0.32 answered to each kind of body fliprm sends."""
    if "prompt_logprobs" in body:
        last = body["messages"][-1]["content"]
        return fixture("likelihood_utf8_reply.json" if last.endswith("猫.")
                       else "likelihood_reply.json")
    if "structured_outputs" in body:
        return fixture("recut_reply.json")
    if "response_format" in body:
        return fixture("schema_reply.json")
    # anything else, a llama.cpp `grammar` included (vLLM ignores it): free text
    return fixture("old_forced_reply.json")


def StandIn(reply: Callable[[dict[str, Any]], dict[str, Any]] = vllm_reply,
            models: dict[str, Any] | None = None, drop_first_gets: int = 0) -> OpenAIStandIn:
    """A server on 127.0.0.1 that answers like vLLM (its model list included)."""
    return OpenAIStandIn(reply, models if models is not None else fixture("models.json"),
                         drop_first_gets)


@pytest.fixture
def vllm():
    srv = StandIn()
    yield srv
    srv.close()


def likelihood(url: str, instruction: str, response: str, **backend: Any):
    rm = FlipReward(OpenAIBackend(base_url=url, model="qwen05", **backend), method="likelihood",
                    max_retries=0)
    try:
        (r,) = rm.score([instruction], [response])
    finally:
        rm.close()
    return r


# ---- dialect -----------------------------------------------------------------------------------


def test_vllm_is_recognised_from_its_real_models_reply(vllm):
    assert asyncio.run(OpenAIBackend(base_url=vllm.url).dialect()) == "vllm"


def test_a_server_of_unknown_family_gets_a_likelihood_error_naming_the_setting():
    srv = StandIn(models={"object": "list", "data": [{"id": "m", "owned_by": "someone"}]})
    try:
        r = likelihood(srv.url, "Name the capital of France.", "The capital of France is Paris.")
    finally:
        srv.close()
    assert r.reward is None and "likelihood_mode" in r.error and srv.bodies == []


def test_an_unreachable_server_is_not_remembered_as_of_unknown_family():
    # The first GET /models dies (a vLLM restarting); the retry must ask again, not fall back
    # to "generic" for good (which failed every likelihood item and sent prefixes unflagged).
    srv = StandIn(drop_first_gets=1)
    try:
        rm = FlipReward(OpenAIBackend(base_url=srv.url, model="qwen05"), method="likelihood",
                        max_retries=1)
        rm.engine.backoff_s = 0.01
        (r,) = rm.score(["Name the capital of France."], ["The capital of France is Paris."])
        rm.close()
    finally:
        srv.close()
    assert r.error is None, r.error
    (body,) = srv.bodies
    assert body["prompt_logprobs"] == 0 and body["continue_final_message"] is True


# ---- silent bug 1: likelihood on vLLM -----------------------------------------------------------


def test_likelihood_on_vllm_is_one_prompt_logprobs_request_never_a_llamacpp_grammar(vllm):
    r = likelihood(vllm.url, "Name the capital of France.", "The capital of France is Paris.")
    assert r.error is None, r.error
    (body,) = vllm.bodies  # one request per item
    assert "grammar" not in body and "structured_outputs" not in body
    assert "logprobs" not in body and "response_format" not in body
    assert body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
    # the instruction ends the continued assistant message: the server applies the chat template
    assert body["messages"][-1] == {"role": "assistant",
                                    "content": PREFIX + "Name the capital of France."}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    # the score is the mean over exactly the instruction's tokens, read from vLLM's reply
    span = last_tokens(fixture("likelihood_reply.json"), 6)
    assert "".join(t for t, _ in span) == "Name the capital of France."
    mean = sum(lp for _, lp in span) / 6
    assert r.extra["forced_tokens"] == 6
    assert r.logprob == pytest.approx(mean) and r.reward == pytest.approx(math.exp(mean))


def test_likelihood_forced_mode_on_vllm_is_refused_not_scored(vllm):
    # vLLM ignores `grammar` and renormalises structured-output log-probs: no forced mode there
    r = likelihood(vllm.url, "Name the capital of France.", "The capital of France is Paris.",
                   likelihood_mode="forced")
    assert r.reward is None and "prompt_logprobs" in r.error
    assert vllm.bodies == []


def test_a_server_that_is_not_llamacpp_gives_an_error_not_a_reward_in_forced_mode(vllm):
    # Told it is llama.cpp, the backend asks for llama.cpp's template and token endpoints; a
    # server without them (here one answering like vLLM) is an error. Before: a one-string
    # `grammar` was sent, vLLM ignored it and the free text's log-probs became the reward.
    r = likelihood(vllm.url, "Name the capital of France.", "The capital of France is Paris.",
                   dialect="llamacpp")
    assert all("grammar" not in b for b in vllm.bodies)
    assert r.reward is None and r.logprob is None
    assert "/apply-template returned no prompt" in r.error


def test_likelihood_span_with_a_character_split_over_two_tokens(vllm):
    # 猫 is two byte-level tokens; vLLM decodes the first as "" and the second as " 猫"
    r = likelihood(vllm.url, "Écris un poème sur 猫.", "Le chat dort.")
    assert r.error is None, r.error
    span = last_tokens(fixture("likelihood_utf8_reply.json"), 11)
    assert [t for t, _ in span][-4:] == ["", "", " 猫", "."]
    assert "".join(t for t, _ in span) == "Écris un poème sur 猫."
    assert r.extra["forced_tokens"] == 11
    assert r.logprob == pytest.approx(sum(lp for _, lp in span) / 11)


def test_span_of_a_prompt_that_does_not_end_with_the_instruction_is_an_error():
    entries = fixture("likelihood_reply.json")["prompt_logprobs"]
    with pytest.raises(BadResponse, match="do not end with the forced instruction"):
        span_logprobs(entries, "Write a poem about dogs.")
    # a token straddling the start of the span counts, clipped to the span's characters
    got = span_logprobs(entries, "ital of France.")
    assert [t for t, _ in got] == ["ital", " of", " France", "."]
    assert got[0][1] == last_tokens(fixture("likelihood_reply.json"), 4)[0][1]


# ---- silent bug 2: the assistant prefix ---------------------------------------------------------


def _recut_request() -> GenerateRequest:
    msgs = tuple(fixture_messages())
    prefix = '{"REASONING": "The response names the capital of France.", "' + INSTRUCTION_KEY + '": "'
    return GenerateRequest(messages=msgs, max_tokens=64, assistant_prefix=prefix,
                           grammar=_STRING_TAIL)


def fixture_messages() -> list[dict[str, str]]:
    return [{"role": "system", "content": "Infer the instruction."},
            {"role": "user", "content": "The capital of France is Paris."}]


def test_an_assistant_prefix_sent_to_vllm_is_continued_not_closed(vllm):
    backend = OpenAIBackend(base_url=vllm.url, model="qwen05")
    req = _recut_request()
    comp = asyncio.run(backend.generate(req))
    (body,) = vllm.bodies
    assert body["messages"][-1] == {"role": "assistant", "content": req.assistant_prefix}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    # the grammar goes in vLLM's own field; llama.cpp's would be ignored
    assert "grammar" not in body and body["structured_outputs"] == {"grammar": _STRING_TAIL}
    # vLLM returns only the continuation
    assert comp.text == 'What is the capital of France?"}'
    assert json.loads(req.assistant_prefix + comp.text)[INSTRUCTION_KEY] == "What is the capital of France?"


def test_llamacpp_bodies_keep_llamacpps_fields():
    body = build_body(_recut_request(), dialect="llamacpp")
    assert body["grammar"] == _STRING_TAIL
    assert "continue_final_message" not in body and "structured_outputs" not in body


def test_f1_reasoning_recut_on_vllm_continues_the_json_prefix():
    # The first answer's REASONING reached the cap (the schema reply, its reasoning lengthened
    # to the cap), so F1 asks again with the cut reasoning as an assistant prefix.
    first = fixture("schema_reply.json")
    reasoning = ("The response states a fact about France. " * 40)[:FLIP_REASONING_MAX_CHARS]
    first["choices"][0]["message"]["content"] = json.dumps(
        {"REASONING": reasoning, INSTRUCTION_KEY: "and then the"})

    def reply(body: dict[str, Any]) -> dict[str, Any]:
        return copy.deepcopy(first) if "response_format" in body else vllm_reply(body)

    srv = StandIn(reply)
    try:
        rm = FlipReward(OpenAIBackend(base_url=srv.url, model="qwen05"), template="flip",
                        max_retries=0, method="f1")
        (r,) = rm.score(["What is the capital of France?"], ["The capital of France is Paris."])
        rm.close()
    finally:
        srv.close()
    assert r.error is None, r.error
    assert r.extra.get("reasoning_recut") is True
    assert r.inferred_instruction == "What is the capital of France?" and r.reward == 1.0
    recut = srv.bodies[1]
    assert recut["continue_final_message"] is True and recut["add_generation_prompt"] is False
    assert recut["messages"][-1]["role"] == "assistant"
    assert recut["messages"][-1]["content"].endswith(', "' + INSTRUCTION_KEY + '": "')
    assert "grammar" not in recut and "structured_outputs" in recut


# ---- replies -----------------------------------------------------------------------------------


def test_f1_with_json_schema_on_vllm(vllm):
    rm = FlipReward(OpenAIBackend(base_url=vllm.url, model="qwen05"), max_retries=0, method="f1")
    (r,) = rm.score(["Write a sentence about Paris."], ["The capital of France is Paris."])
    rm.close()
    (body,) = vllm.bodies
    assert body["response_format"]["type"] == "json_schema"
    assert "continue_final_message" not in body  # no prefix, nothing to continue
    assert r.parse_ok and r.inferred_instruction == "Write a sentence about Paris."
    assert r.reward == 1.0


def test_vllms_reasoning_field_is_read():
    data = fixture("schema_reply.json")
    data["choices"][0]["message"]["reasoning"] = "thinking"
    assert read_reply(data, latency_s=0.0).extra == {"reasoning_content": "thinking"}
