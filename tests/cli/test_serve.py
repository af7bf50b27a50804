"""``fliprm serve`` reads ``FLIPRM_*`` settings as the RL adapters do (issue 21): one environment
configures client and server alike, and a bad value stops it before anything is loaded."""

from __future__ import annotations

import pytest

from fliprm.config import RewardConfig
from helpers_fliprm import served_reward


def test_env_method_and_preset_reach_serve(monkeypatch):
    res, rm = served_reward(monkeypatch, ["-b", "fake", "--no-cache"],
                             {"FLIPRM_METHOD": "f1", "FLIPRM_PRESET": "paper"})
    assert res.exit_code == 0, res.output
    assert rm.config == RewardConfig.preset("paper", backend="fake", method="f1")


def test_env_settings_reach_serve_and_flags_win(monkeypatch):
    env = {"FLIPRM_BACKEND": "fake", "FLIPRM_MAX_TOKENS": "64", "FLIPRM_MASK_ECHO": "false",
           "FLIPRM_METHOD": "likelihood"}
    res, rm = served_reward(monkeypatch, ["--no-cache", "--method", "pmi"], env)
    assert res.exit_code == 0, res.output
    assert (rm.config.backend, rm.config.max_tokens, rm.config.mask_echo, rm.config.method) == (
        "fake", 64, False, "pmi")


def test_env_failure_score_reaches_get_reward(monkeypatch):
    res, _ = served_reward(monkeypatch, ["-b", "fake", "--no-cache"],
                            {"FLIPRM_FAILURE_SCORE": "-1.5"})
    assert res.exit_code == 0, res.output
    assert served_reward.options["failure_score"] == -1.5  # type: ignore[attr-defined]


@pytest.mark.parametrize(("var", "value"), [("FLIPRM_MAX_TOKENS", "abc"),
                                            ("FLIPRM_METHOD", "bleu"),
                                            ("FLIPRM_TIMEOUT", "-1"),
                                            ("FLIPRM_FAILURE_SCORE", "low")])
def test_a_bad_env_value_is_a_one_line_error_before_loading(monkeypatch, var, value):
    res, rm = served_reward(monkeypatch, ["-b", "fake", "--no-cache"], {var: value})
    assert res.exit_code == 2 and rm is None
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and f"{var}={value!r}" in lines[0], res.output


def test_fliprm_api_key_stays_the_servers_own_key(monkeypatch):
    # FLIPRM_API_KEY is what clients must send; it must not become the backend's key
    res, rm = served_reward(monkeypatch, ["-b", "fake", "--no-cache"], {"FLIPRM_API_KEY": "k"})
    assert res.exit_code == 0, res.output
    assert rm.runtime.api_key is None
