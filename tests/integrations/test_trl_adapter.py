"""The TRL reward shape: batch in, list[float | None] out, picklable factory, async detection."""

from __future__ import annotations

import inspect
import pickle

import pytest

from fliprm.errors import ConfigError
from fliprm.integrations.trl import FlipRewardFunction, flip_reward, get_flip_reward

INSTR = "Name the capital of France."


class TestFlipReward:
    async def test_standard_format_scores_f1_against_prompt(self, fake_reward):
        fake_reward()
        rewards = await flip_reward(prompts=[INSTR, "Say hi."], completions=["Paris.", "Hello"])
        assert rewards == [1.0, 0.0]

    async def test_conversational_format_uses_last_user_turn(self, fake_reward):
        rm = fake_reward()
        prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": INSTR}]]
        completions = [[{"role": "assistant", "content": "Paris."}]]
        assert await flip_reward(prompts=prompts, completions=completions) == [1.0]
        # the earlier turn went to the judge as context, the completion as the response
        sent = rm.backend.calls[0].messages[-1]["content"]
        assert "Be brief." in sent and "Paris." in sent

    async def test_failed_judge_call_yields_none_for_that_sample_only(self, fake_reward):
        fake_reward()
        rewards = await flip_reward(prompts=[INSTR, INSTR], completions=["Paris.", "FAIL"])
        assert rewards == [1.0, None]

    async def test_empty_completion_scores_zero_without_a_judge_call(self, fake_reward):
        rm = fake_reward()
        assert await flip_reward(prompts=[INSTR], completions=["  "]) == [0.0]
        assert rm.backend.calls == []

    async def test_extra_kwargs_are_ignored(self, fake_reward):
        fake_reward()
        rewards = await flip_reward(
            prompts=[INSTR],
            completions=["Paris."],
            completion_ids=[[1, 2]],
            trainer_state=object(),
            solution=["x"],
            log_metric=lambda *a: None,
        )
        assert rewards == [1.0]

    async def test_instruction_column_overrides_prompt(self, fake_reward, monkeypatch):
        fake_reward()
        monkeypatch.setenv("FLIPRM_INSTRUCTION_COLUMN", "instruction")
        rewards = await flip_reward(
            prompts=["templated <prompt> text"], completions=["Paris."], instruction=[INSTR]
        )
        assert rewards == [1.0]

    async def test_missing_instruction_column_is_a_clear_error(self, fake_reward):
        fake_reward()
        f = get_flip_reward(instruction_column="instruction")
        with pytest.raises(ConfigError, match="instruction"):
            await f(prompts=[INSTR], completions=["Paris."])

    async def test_log_extra_receives_inferred_instructions(self, fake_reward):
        fake_reward()
        logged = {}
        await flip_reward(
            prompts=[INSTR, INSTR],
            completions=["Paris.", "FAIL"],
            log_extra=lambda k, v: logged.setdefault(k, v),
        )
        assert logged == {"flip_inferred_instruction": [INSTR, ""]}


class TestFactory:
    def test_reward_is_picklable_and_keeps_settings(self):
        f = get_flip_reward(server_url="http://127.0.0.1:9", max_tokens=99)
        g = pickle.loads(pickle.dumps(f))
        assert isinstance(g, FlipRewardFunction)
        assert g.settings == f.settings and g.settings.config.max_tokens == 99
        assert g.__name__ == "flip_reward"

    def test_pickle_carries_no_model(self, fake_reward):
        fake_reward()
        f = get_flip_reward()
        assert len(pickle.dumps(f)) < 2000

    def test_detected_as_async_by_old_and_new_trl(self):
        f = get_flip_reward()
        # TRL < #7213: inspect.iscoroutinefunction (sees through partials)
        assert inspect.iscoroutinefunction(f)
        # TRL >= #7213: also inspects __call__
        assert inspect.iscoroutinefunction(type(f).__call__)
        assert inspect.iscoroutinefunction(flip_reward)

    def test_unknown_setting_is_rejected(self):
        with pytest.raises(ConfigError, match="max_tokenz"):
            get_flip_reward(max_tokenz=3)

    async def test_factory_call_scores(self, fake_reward):
        fake_reward()
        f = get_flip_reward(max_tokens=64)
        assert await f(prompts=[INSTR], completions=["Paris."]) == [1.0]

    def test_trl_names_it_flip_reward(self):
        utils = pytest.importorskip("trl.trainer.utils")
        assert utils.get_callable_name(get_flip_reward()) == "flip_reward"


def test_env_settings_are_read_at_call_time(monkeypatch):
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv("FLIPRM_MAX_TOKENS", "77")
    monkeypatch.setenv("FLIPRM_SERVER_URL", "http://h:1")
    monkeypatch.setenv("FLIPRM_API_KEY", "k")
    s = FlipSettings.from_env()
    assert (s.config.max_tokens, s.adapter.server_url, s.adapter.server_api_key) == (77, "http://h:1", "k")
    monkeypatch.setenv("FLIPRM_MAX_TOKENS", "lots")
    with pytest.raises(ConfigError):
        FlipSettings.from_env()


def test_import_builds_no_model():
    # a fresh interpreter: importing the adapters builds no scorer and loads no runtime
    import subprocess
    import sys

    code = ("import sys, fliprm.integrations._common as c, fliprm.integrations.trl, "
            "fliprm.integrations.verl, fliprm.integrations.openrlhf; "
            "print(len(c._scorers), 'xllamacpp' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.check_output([sys.executable, "-c", code], text=True).split()
    assert out == ["0", "False", "False"]


def test_api_key_serves_as_server_key_when_only_a_server_is_configured(monkeypatch):
    from fliprm.integrations._common import FlipSettings

    monkeypatch.setenv("FLIPRM_API_KEY", "k")
    monkeypatch.delenv("FLIPRM_SERVER_URL", raising=False)
    assert FlipSettings.from_env().adapter.server_api_key is None
    assert get_flip_reward(server_url="http://h:1").settings.adapter.server_api_key == "k"
