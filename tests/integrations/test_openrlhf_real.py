"""fliprm inside the real OpenRLHF (0.11.x, requirements/rl-tests.txt): its single-turn rollout
executor (``openrlhf.utils.agent.SingleTurnAgentExecutor``, what ``--reward.remote_url``
builds) decodes prompt + response *with* special tokens and asks fliprm for the reward, over
HTTP from a real ``fliprm serve`` on 127.0.0.1 (its aiohttp client) and through the file mode
(``reward_func`` loaded by path).

Only the generation engine is a stand-in (vLLM needs a GPU): it returns scripted token ids of
a tiny in-process tokenizer. The judge (``method="f1"``, explicitly) infers exactly the
response it was shown, so each reward is the word F1 between the label and the response
fliprm cut out of OpenRLHF's query: any prompt or template text left in would change it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from helpers_fliprm import shown_response
from helpers_rl import FRANCE, require_installed

require_installed("openrlhf", "pip install --no-deps -r requirements/rl-tests.txt (README, OpenRLHF)")
pytest.importorskip("fastapi")

from openrlhf.utils.agent import SingleTurnAgentExecutor

import fliprm.integrations.openrlhf as flip_openrlhf
from fliprm import FlipReward
from fliprm.backends.fake import FakeBackend
from fliprm.errors import BadResponse
from fliprm.integrations import set_reward
from fliprm.server import ServerThread, create_app

HAIKU = "Write a haiku about rain."
CASES = [  # (instruction = the label, response, finish, expected reward, judge failed)
    (FRANCE, "Paris is the capital.", "stop", 2 / 7, 0.0),  # P 1/3, R 1/4
    (HAIKU, "A haiku about rain, write it.", "stop", 8 / 9, 0.0),  # P 4/5, R 1
    (HAIKU, "Rain haiku", "length", 2 / 3, 0.0),  # cut at max_tokens: no EOS; P 1, R 1/2
    (HAIKU, "FAIL", "stop", 0.0, 1.0),  # the judge call fails: failure_score, flagged
]


def echo_judge(req) -> str:
    shown = shown_response(req)
    if "FAIL" in shown:
        raise BadResponse("judge exploded")
    return json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": shown})


def echo_reward() -> FlipReward:
    # the echo guard would mask the label words the responses repeat: off, named
    return FlipReward(FakeBackend(echo_judge), method="f1", mask_echo=False, parse_failure="error",
                      max_retries=0)


@dataclass
class ScriptedEngine:
    """Stands in for OpenRLHF's vLLM engine: replies with the token ids of ``text`` (plus EOS
    unless the reply was cut at max_tokens), and records what it was asked."""

    tokenizer: object
    text: str
    finish_reason: str = "stop"
    prompts: list = field(default_factory=list)

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        self.prompts.append(list(prompt_token_ids))
        suffix = self.tokenizer.eos_token if self.finish_reason == "stop" else ""
        ids = self.tokenizer(self.text + suffix, add_special_tokens=False)["input_ids"]
        out = SimpleNamespace(token_ids=ids, finish_reason=self.finish_reason, logprobs=None)
        return SimpleNamespace(outputs=[out])


def chat_prompt(tok, instruction: str) -> str:
    # what OpenRLHF's prompt dataset builds with --data.apply_chat_template
    return tok.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, tokenize=False
    )


async def rollout(executor, tok, instruction, response, finish) -> dict:
    engine = ScriptedEngine(tok, response, finish)
    params = SimpleNamespace(max_tokens=32, logprobs=None)
    out = await executor.execute(
        chat_prompt(tok, instruction), instruction, copy.copy(params), 256, tok, engine
    )
    assert len(engine.prompts) == 1
    return out


def failed_flag(extra_logs: dict) -> float:
    # loosely: the adapter's failure flag, whatever its final name
    [flag] = [v for k, v in extra_logs.items() if "fail" in k]
    return float(flag[0])


@pytest.fixture(autouse=True)
def _no_override():
    set_reward(None)
    yield
    set_reward(None)


@pytest.fixture
def fliprm_server(monkeypatch):
    # the server scores with f1; a client must ask for f1 too, or it refuses (settings differ)
    monkeypatch.setenv("FLIPRM_METHOD", "f1")
    with ServerThread(create_app(echo_reward())) as srv:
        yield srv


async def test_remote_rm_url_http_client_against_fliprm_serve(tiny_tokenizer, fliprm_server):
    """``--reward.remote_url http://host:port/get_reward``: OpenRLHF's own aiohttp client."""
    executor = SingleTurnAgentExecutor(remote_rm_url=fliprm_server.url + "/get_reward")
    assert executor.reward_func is None  # the HTTP mode
    for instruction, response, finish, expected, failed in CASES:
        out = await rollout(executor, tiny_tokenizer, instruction, response, finish)
        assert out["reward"] == pytest.approx([expected]), (response, out)
        assert out["scores"] == pytest.approx([expected])
        assert failed_flag(out["extra_logs"]) == failed
        assert out["truncated"] is (finish == "length")


async def test_several_remote_urls_rotate_and_each_answers(tiny_tokenizer, fliprm_server):
    """A list of URLs: 0.11 sends each single-sample call to the next URL in turn."""
    with ServerThread(create_app(echo_reward())) as second:
        executor = SingleTurnAgentExecutor(
            remote_rm_url=[fliprm_server.url + "/get_reward", second.url + "/get_reward"]
        )
        rewards = [
            (await rollout(executor, tiny_tokenizer, HAIKU, "Rain haiku", "stop"))["reward"]
            for _ in range(2)
        ]
        items = [_metric(srv.url, "fliprm_items_total") for srv in (fliprm_server, second)]
    assert rewards == [pytest.approx([2 / 3])] * 2
    assert items == [1, 1]


def _metric(url: str, name: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


async def test_remote_rm_url_file_mode_loads_reward_func(
    tiny_tokenizer, fliprm_server, monkeypatch
):
    """``--reward.remote_url /path/to/fliprm/integrations/openrlhf.py``: OpenRLHF loads the
    file by path and calls ``reward_func`` in a thread; here it scores on ``fliprm serve``
    (``FLIPRM_SERVER_URL``), as a multi-node job would."""
    monkeypatch.setenv("FLIPRM_SERVER_URL", fliprm_server.url)
    executor = SingleTurnAgentExecutor(remote_rm_url=flip_openrlhf.__file__)
    assert executor.reward_func is not None and executor.reward_func.__name__ == "reward_func"
    for instruction, response, finish, expected, failed in CASES:
        out = await rollout(executor, tiny_tokenizer, instruction, response, finish)
        assert out["reward"].tolist() == pytest.approx([expected]), (response, out)
        assert out["scores"].tolist() == pytest.approx([expected])
        assert failed_flag({k: v.tolist() for k, v in out["extra_logs"].items()}) == failed
