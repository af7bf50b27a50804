"""verl shapes: compute_score(data_source, solution_str, ground_truth, extra_info, **kw) -> dict."""

from __future__ import annotations

import json

import httpx
import pytest

from fliprm.integrations import set_reward
from fliprm.integrations.verl import acompute_score_batch, compute_score, compute_score_batch

INSTR = "Name the capital of France."


async def test_instruction_comes_from_extra_info_question(fake_reward):
    fake_reward()
    out = await compute_score("alpaca", "Paris.", "ignored", extra_info={"question": INSTR},
                              method="f1")
    assert out["score"] == 1.0 and out["flip_failed"] == 0.0
    text = {"flip_method", "flip_inferred_instruction"}
    assert all(isinstance(v, float) for k, v in out.items() if k not in text)
    assert (out["flip_method"], out["flip_inferred_instruction"]) == ("f1", INSTR)


async def test_falls_back_to_ground_truth_and_accepts_verls_own_keywords(fake_reward):
    fake_reward()
    out = await compute_score(
        "alpaca", "Paris.", INSTR, None, reward_model_tokenizer=None, model_name="m",
        sampling_params={"temperature": 1.0}, method="f1",
    )
    assert out["score"] == 1.0


async def test_unknown_keyword_is_an_error_not_ignored(fake_reward):
    from fliprm.errors import ConfigError

    fake_reward()
    with pytest.raises(ConfigError, match="bogus"):
        await compute_score("alpaca", "Paris.", INSTR, bogus=1)
    with pytest.raises(ConfigError, match="max_tokenz"):
        compute_score_batch(["a"], ["Paris."], [INSTR], None, max_tokenz=3)


async def test_failure_scores_failure_score_and_is_flagged(fake_reward):
    fake_reward()
    out = await compute_score("alpaca", "FAIL", INSTR, failure_score=-1.0)
    assert out["score"] == -1.0 and out["flip_failed"] == 1.0


def test_batch_variant_is_sync_and_ordered(fake_reward):
    rm = fake_reward()
    out = compute_score_batch(
        data_sources=["a", "b", "c"],
        solution_strs=["Paris.", "FAIL", "Hello"],
        ground_truths=[INSTR, INSTR, "Say hi."],
        extra_infos=[None, {}, {"question": "Say hi."}],
    )
    assert [o["score"] for o in out] == [1.0, 0.0, 0.0]
    assert [o["flip_failed"] for o in out] == [0.0, 1.0, 0.0]
    assert len(rm.backend.calls) == 3


async def test_async_batch_variant(fake_reward):
    fake_reward()
    out = await acompute_score_batch(["a"], ["Paris."], [INSTR], None)
    assert out[0]["score"] == 1.0


async def test_reward_router_address_is_called_as_openai_chat(monkeypatch):
    """With verl's router, the judge is POSTed OpenAI chat JSON at http://{addr}/v1/chat/completions."""
    set_reward(None)
    # the F1 path, which is a chat call (pmi, the RL default, is a completions call:
    # tests/backends/test_openai_vllm.py)
    monkeypatch.setenv("FLIPRM_METHOD", "f1")
    seen = []

    async def fake_post(self, url, json=None, **kw):
        seen.append((str(self.base_url), url, json))
        reply = {
            "choices": [{"message": {"content": _reply()}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        }
        return httpx.Response(200, json=reply, request=httpx.Request("POST", "http://x"))

    monkeypatch.setattr(httpx.AsyncClient, "post", fake_post)
    tok = type("Tok", (), {"name_or_path": "Qwen/judge"})()
    out = await compute_score(
        "alpaca", "Paris.", INSTR, reward_router_address="10.0.0.5:3000", reward_model_tokenizer=tok
    )
    assert out["score"] == 1.0
    base, path, body = seen[0]
    assert base.rstrip("/") == "http://10.0.0.5:3000/v1" and path == "/chat/completions"
    assert body["model"] == "Qwen/judge" and body["messages"][-1]["role"] == "user"


def _reply() -> str:
    return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": INSTR})


@pytest.fixture(autouse=True)
def _reset():
    yield
    set_reward(None)


async def test_file_loads_by_path_like_verl(fake_reward):
    """verl imports custom_reward_function.path as a standalone file, not as a package module."""
    import importlib.util

    import fliprm.integrations.verl as mod

    spec = importlib.util.spec_from_file_location("custom_module", mod.__file__)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    fake_reward()
    out = await loaded.compute_score("a", "Paris.", INSTR)
    assert out["score"] == 1.0
